"""kaitopy.webhooks: the validating admission webhook for Workspaces.

The rules are pure functions (`validate_create`, `validate_update`); `check_configs` adds the
ConfigMap checks that need the API server; `WebhookServer` serves them over TLS.
"""

from kaitopy.webhooks.validation import FieldError, pydantic_errors, validate_create, validate_update

__all__ = ["FieldError", "pydantic_errors", "validate_create", "validate_update"]
