"""`kaitopy provisioner --cloud-provider=azure` as a separate process, pointed at the fault suite's
ARM-shaped test server: the same manager, controllers, flags and probes, only the provider is built
with a static token and the server's CA instead of Azure AD and the public ARM endpoint.

    python -m tests.chaos.azure_provisioner --arm-url https://127.0.0.1:PORT --ca ca.pem \\
        --probe-address 127.0.0.1:PORT [any `kaitopy provisioner` flag]

The test server lives in the suite's process, so it outlives this one being SIGKILLed.
"""

from __future__ import annotations

import argparse
import sys

from kaitopy.provisioner import app
from kaitopy.provisioner.azure import AzureProvider
from tests.support.azure import StaticToken, fake_arm_settings
from tests.support.fake_arm import FakeArm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    app.add_arguments(parser)
    arm = parser.add_argument_group("test ARM server")
    arm.add_argument("--arm-url", required=True)
    arm.add_argument("--ca", required=True, help="PEM file of the CA that signed the server's certificate")
    # The defaults are the test server's.
    defaults = FakeArm.__init__.__kwdefaults__ or {}
    arm.add_argument("--subscription", default=defaults["subscription"])
    arm.add_argument("--resource-group", default=defaults["resource_group"])
    arm.add_argument("--cluster", default=defaults["cluster"])
    arm.add_argument("--location", default=defaults["location"])
    arm.add_argument(
        "--retry-backoff-factor",
        type=float,
        default=0.8,
        help="the SDK's backoff between its own retries of 429/5xx (a Retry-After header wins)",
    )


def provider_for_test_arm(args: argparse.Namespace) -> app.ProviderFactory:
    settings = fake_arm_settings(
        args.arm_url, args.subscription, args.resource_group, args.cluster, args.location
    )
    return lambda _client: AzureProvider(
        settings,
        StaticToken(),
        connection_verify=args.ca,
        retry_backoff_factor=args.retry_backoff_factor,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="azure_provisioner", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.cloud_provider = "azure"
    return app.run(args, provider_for_test_arm)


if __name__ == "__main__":
    sys.exit(main())
