"""The validating admission webhook for Workspaces: an aiohttp server over TLS.

`WebhookServer.start()` gets (or issues) its certificate, starts serving, and registers itself in a
ValidatingWebhookConfiguration with the CA bundle; a background task renews the certificate before
it expires and reloads it without a restart. Both fail closed (failurePolicy Fail): a workspace,
or a change of its template or Secret references, is never admitted unchecked. Updates reach the
webhook only when resource, inference or tuning change (matchConditions), so a webhook outage never
blocks the controller from removing finalizers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import ValidationError

from kaitopy.api import GROUP, SERVED_VERSIONS, Workspace
from kaitopy.api.constants import UNSERVED_KINDS, unserved_message
from kaitopy.presets import Catalog
from kaitopy.runtime import Client, Conflict, Kind, NotFound, TransportError
from kaitopy.runtime.errors import ApiError
from kaitopy.webhooks.access import check_access
from kaitopy.webhooks.certs import CertBundle, ensure_certificate
from kaitopy.webhooks.configs import check_configs
from kaitopy.webhooks.inferenceset import review_inferenceset
from kaitopy.webhooks.validation import (
    FieldError,
    pydantic_errors,
    spec_changed,
    validate_create,
    validate_update,
)

log = logging.getLogger(__name__)

VALIDATING_WEBHOOK_CONFIGURATION = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingWebhookConfiguration",
    "validatingwebhookconfigurations",
    namespaced=False,
)
PATH = "/validate"
# The API server's version of validation.spec_changed: metadata-only updates (finalizers, labels)
# skip the webhook, so they pass even while it is down.
# Workspaces keep resource, inference and tuning at the top; an InferenceSet has a spec.
SPEC_CHANGED = " || ".join(
    f"object.?{f}.orValue({{}}) != oldObject.?{f}.orValue({{}})"
    for f in ("resource", "inference", "tuning", "spec")
)


@dataclass(frozen=True)
class WebhookSettings:
    """Where the webhook listens and how the API server reaches it."""

    host: str = "0.0.0.0"
    port: int = 9443
    """0 picks a free port (tests)."""
    namespace: str = "kaito-system"
    """Where the certificate Secret lives (the webhook's own namespace)."""
    secret_name: str = "kaitopy-webhook-cert"
    configuration_name: str = "kaitopy-workspace-validation"
    service_name: str | None = "kaitopy-webhook"
    """The Service in front of the webhook; the API server calls https://<service>.<namespace>.svc."""
    service_port: int = 443
    url: str | None = None
    """Instead of a Service, a URL the API server calls; "{port}" is replaced by the bound port."""
    timeout_seconds: int = 10
    """How long the API server waits; validation reads at most two ConfigMaps, well within it."""
    namespace_selector: dict[str, Any] | None = None
    """Limits the webhook to matching namespaces (all when None)."""
    cert_validity: datetime.timedelta = datetime.timedelta(days=90)
    renew_before: datetime.timedelta = datetime.timedelta(days=30)
    check_interval_s: float = 3600.0
    extra_hosts: tuple[str, ...] = field(default_factory=tuple)
    url_allowed_networks: tuple[str, ...] = ()
    """The controller's --url-allow-network: private networks tuning.input.urls may name."""
    manage_configuration: bool = True
    """True (development, tests): create or update the whole ValidatingWebhookConfiguration.
    False (installed from manifests/ or the chart, which ship it): only write the caBundle of the
    configuration named `configuration_name`, so RBAC can limit us to get/patch on that one name."""


class WebhookServer:
    """Serves /validate (AdmissionReview v1) and /healthz; use `start()` and `stop()`."""

    def __init__(
        self, client: Client, settings: WebhookSettings | None = None, catalog: Catalog | None = None
    ):
        self.client = client
        self.settings = settings or WebhookSettings()
        self.catalog = catalog or Catalog.load()
        self._runner: web.AppRunner | None = None
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._bundle: CertBundle | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="kaitopy-webhook-")
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        # Bind first: a "{port}" URL needs the real port before the certificate and registration.
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port, ssl_context=self._ssl)
        # The context has no certificate yet, so nothing can connect until _load() below.
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        try:
            await self._refresh()
        except BaseException:
            # No configuration to serve (or no certificate): release the port before failing.
            await self._runner.cleanup()
            self._runner = None
            raise
        self._renewer = asyncio.create_task(self._renew_forever(), name="webhook certificate renewal")
        log.info("webhook serving", extra={"port": self.port, "url": self.client_config().get("url")})

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._runner is not None:
            await self._runner.cleanup()
        self._tmp.cleanup()

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- certificate and registration -------------------------------------------------------------
    def hosts(self) -> list[str]:
        s = self.settings
        if s.url is not None:
            host = urlsplit(s.url.replace("{port}", "1")).hostname
            assert host, f"webhook url {s.url!r} has no host"
            names = [host]
        elif s.service_name:
            svc, ns = s.service_name, s.namespace
            names = [f"{svc}.{ns}.svc", svc, f"{svc}.{ns}", f"{svc}.{ns}.svc.cluster.local"]
        else:
            names = ["localhost"]
        return [*names, *s.extra_hosts]

    def client_config(self) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any]
        if s.url is not None:
            config = {"url": s.url.replace("{port}", str(self.port))}
        else:
            config = {
                "service": {
                    "namespace": s.namespace,
                    "name": s.service_name,
                    "port": s.service_port,
                    "path": PATH,
                }
            }
        if self._bundle is not None:
            config["caBundle"] = base64.b64encode(self._bundle.ca_pem).decode()
        return config

    def configuration(self) -> dict[str, Any]:
        """The ValidatingWebhookConfiguration this server registers."""
        s = self.settings

        def webhook(operation: str) -> dict[str, Any]:
            hook: dict[str, Any] = {
                "name": f"{operation.lower()}.workspace.{GROUP}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": s.timeout_seconds,
                "clientConfig": self.client_config(),
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": list(SERVED_VERSIONS),
                        "operations": [operation],
                        # Creates of the kinds not served yet come here to be refused with the
                        # reason; none exists to update.
                        "resources": ["workspaces", "inferencesets"]
                        + ([k.plural for k in UNSERVED_KINDS.values()] if operation == "CREATE" else []),
                        "scope": "Namespaced",
                    }
                ],
            }
            if s.namespace_selector is not None:
                hook["namespaceSelector"] = s.namespace_selector
            if operation == "UPDATE":
                hook["matchConditions"] = [{"name": "spec-changed", "expression": SPEC_CHANGED}]
            return hook

        return {
            "apiVersion": VALIDATING_WEBHOOK_CONFIGURATION.api_version,
            "kind": VALIDATING_WEBHOOK_CONFIGURATION.kind,
            "metadata": {
                "name": s.configuration_name,
                "labels": {"app.kubernetes.io/name": "kaitopy-webhook"},
            },
            "webhooks": [webhook("CREATE"), webhook("UPDATE")],
        }

    async def _refresh(self) -> None:
        s = self.settings
        bundle = await ensure_certificate(
            self.client,
            namespace=s.namespace,
            secret_name=s.secret_name,
            hosts=self.hosts(),
            validity=s.cert_validity,
            renew_before=s.renew_before,
        )
        if bundle != self._bundle:
            self._load(bundle)
        await self._register()

    def _load(self, bundle: CertBundle) -> None:
        directory = Path(self._tmp.name)
        cert, key = directory / "tls.crt", directory / "tls.key"
        cert.write_bytes(bundle.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.key_pem)
        # Loading into the live context makes new handshakes use the new certificate.
        self._ssl.load_cert_chain(cert, key)
        self._bundle = bundle

    async def _register(self) -> None:
        if not self.settings.manage_configuration:
            await self._inject_ca_bundle()
            return
        desired = self.configuration()
        for _ in range(5):
            current = await self.client.get_or_none(
                VALIDATING_WEBHOOK_CONFIGURATION, self.settings.configuration_name
            )
            try:
                if current is None:
                    await self.client.create(VALIDATING_WEBHOOK_CONFIGURATION, desired)
                elif current.get("webhooks") != desired["webhooks"]:
                    desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    await self.client.update(VALIDATING_WEBHOOK_CONFIGURATION, desired)
                return
            except Conflict:
                continue
        raise RuntimeError(
            f"could not register ValidatingWebhookConfiguration {self.settings.configuration_name}"
        )

    async def _inject_ca_bundle(self) -> None:
        """Write our CA into each of our webhooks in the shipped configuration, touching nothing
        else (a strategic merge patch keyed by webhook name), and only when it differs."""
        name = self.settings.configuration_name
        current = await self.client.get_or_none(VALIDATING_WEBHOOK_CONFIGURATION, name)
        if current is None:
            raise RuntimeError(
                f"ValidatingWebhookConfiguration {name} not found: it is installed with the manifests "
                "(manifests/base/webhook.yaml or the Helm chart); apply them, or run with "
                "--install-webhook-configuration to let the process create it (development only)"
            )
        ca = self.client_config().get("caBundle")
        ours = {h["name"] for h in self.configuration()["webhooks"]}
        stale = [
            h["name"]
            for h in current.get("webhooks") or ()
            if h.get("name") in ours and (h.get("clientConfig") or {}).get("caBundle") != ca
        ]
        if not stale:
            return
        patch = {"webhooks": [{"name": n, "clientConfig": {"caBundle": ca}} for n in stale]}
        await self.client.patch(VALIDATING_WEBHOOK_CONFIGURATION, name, patch, type="strategic")
        log.info("webhook caBundle written", extra={"configuration": name, "webhooks": stale})

    async def deregister(self) -> None:
        """Remove the configuration if it still sends requests to this server's URL. For a
        server reached by URL (an operator outside the cluster): once it stops, a configuration
        pointing at it would make every Workspace create fail. A Service-backed configuration is
        shared by all replicas and is left in place."""
        if self.settings.url is None or not self.settings.manage_configuration:
            return
        current = await self.client.get_or_none(
            VALIDATING_WEBHOOK_CONFIGURATION, self.settings.configuration_name
        )
        ours = self.client_config().get("url")
        if current is not None and all(
            (h.get("clientConfig") or {}).get("url") == ours for h in current.get("webhooks") or ()
        ):
            with contextlib.suppress(NotFound):
                await self.client.delete(VALIDATING_WEBHOOK_CONFIGURATION, self.settings.configuration_name)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval_s)
            try:
                await self._refresh()
            except (ApiError, TransportError, RuntimeError):
                log.exception("webhook certificate renewal failed; retrying at the next check")

    # -- admission ----------------------------------------------------------------------------------
    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="expected an AdmissionReview v1 with a request")
        try:
            errors = await self.review(req)
        except (ApiError, TransportError) as exc:
            errors = [FieldError("", f"could not check the workspace's ConfigMaps: {exc}")]
        response: dict[str, Any] = {"uid": uid, "allowed": not errors}
        if errors:
            response["status"] = {
                "code": 422,
                "reason": "Invalid",
                "message": "; ".join(str(e) for e in errors),
            }
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def review(self, req: dict[str, Any]) -> list[FieldError]:
        """The errors for one AdmissionRequest (empty: allowed)."""
        operation = req.get("operation")
        if operation not in ("CREATE", "UPDATE") or req.get("subResource"):
            return []
        kind = (req.get("kind") or {}).get("kind")
        if kind in UNSERVED_KINDS:
            return [FieldError("", unserved_message(str(kind)))]
        if kind == "InferenceSet":
            return await review_inferenceset(self.client, self.catalog, req)
        try:
            new = Workspace.model_validate(req.get("object") or {})
            old = (
                Workspace.model_validate(req["oldObject"])
                if operation == "UPDATE" and req.get("oldObject")
                else None
            )
        except ValidationError as exc:
            return pydantic_errors(exc)
        if old is not None and not spec_changed(old, new):
            return []  # metadata only (finalizers, labels): never blocked
        namespace = str(req.get("namespace") or new.namespace)
        # The author's own rights first: a template or a Secret reference must not borrow the
        # controller's, and a ConfigMap they may not read must not be described to them (its keys).
        access_errors = await check_access(self.client, req.get("userInfo") or {}, namespace, old, new)
        if access_errors:
            return access_errors
        config_errors, max_model_len = await check_configs(
            new, namespace, self.client, self.settings.namespace
        )
        allowed = tuple(ip_network(n) for n in self.settings.url_allowed_networks)
        if old is None:
            errors = validate_create(new, self.catalog, max_model_len=max_model_len, url_allowed=allowed)
        else:
            errors = validate_update(old, new, self.catalog, max_model_len=max_model_len, url_allowed=allowed)
        return [*config_errors, *errors]
