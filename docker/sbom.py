"""A CycloneDX 1.5 SBOM of what an image holds, written during its build from what is installed.

Runs inside the image's last build stage with the image's own python3, standard library only (no
SBOM tool is installable in an offline build). It lists:
- every Python distribution in the given site-packages directories (from each `*.dist-info`'s
  METADATA: name, version, licence), as `pkg:pypi` purls;
- every Debian package dpkg records as installed (`/var/lib/dpkg/status`: name, version,
  architecture, source package), as `pkg:deb` purls with the distro from /etc/os-release.
It records what is on disk, nothing else: no hashes it did not compute. Where the Python packages
were installed with `pip --require-hashes` from a lock file, the lock file's sha256 is recorded
(the lock holds each wheel's hash). Output is deterministic (sorted, no timestamp unless
SOURCE_DATE_EPOCH is set), so an unchanged image gets a byte-identical SBOM.

    python3 sbom.py --name NAME [--version V] [--root /] [--site-packages DIR]... [--lock FILE]
                    [--only-deb PACKAGE]... [-o OUT]

(--only-deb: describe just these packages of the root's dpkg database, for an image made of files
copied from the build host, e.g. the tools image's busybox.)
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

TOOL = "kaitopy docker/sbom.py"
_NORMALIZE = re.compile(r"[-_.]+")


def pypi_name(name: str) -> str:
    """The PEP 503 normalized name, which purls use for pypi."""
    return _NORMALIZE.sub("-", name).lower()


def python_components(site_packages: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for info in sorted(site_packages.glob("*.dist-info")):
        metadata = info / "METADATA"
        if not metadata.is_file():
            continue
        msg = email.parser.Parser().parsestr(
            metadata.read_text(encoding="utf-8", errors="replace"), headersonly=True
        )
        name, version = msg.get("Name"), msg.get("Version")
        if not name or not version:
            continue
        purl = f"pkg:pypi/{pypi_name(name)}@{quote(version, safe='+')}"
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
            "properties": [{"name": "kaitopy:location", "value": str(info)}],
        }
        licences = _python_licences(msg)
        if licences:
            component["licenses"] = licences
        out.append(component)
    return out


def _python_licences(msg: Any) -> list[dict[str, Any]]:
    expression = msg.get("License-Expression")
    if expression:
        return [{"expression": expression.strip()}]
    text = (msg.get("License") or "").strip()
    # Some packages put the whole licence text in this field: only a short name is a name.
    if text and len(text) <= 80 and "\n" not in text and text.upper() != "UNKNOWN":
        return [{"license": {"name": text}}]
    classifiers = [
        c.split("::")[-1].strip() for c in msg.get_all("Classifier") or () if c.startswith("License ::")
    ]
    return [{"license": {"name": c}} for c in classifiers if c and c != "OSI Approved"]


def dpkg_packages(status: Path) -> list[dict[str, str]]:
    """Installed packages from dpkg's status file (RFC 822-like paragraphs)."""
    packages = []
    for paragraph in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # a continuation line (descriptions, conffiles): not needed
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            packages.append(fields)
    return sorted(packages, key=lambda f: f["Package"])


def os_release(root: Path) -> dict[str, str]:
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        path = root / candidate
        if path.is_file():
            pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
            return {k: v.strip().strip('"') for k, _, v in pairs}
    return {}


def debian_components(root: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    status = root / "var" / "lib" / "dpkg" / "status"
    if not status.is_file():
        if only:
            raise SystemExit(f"{status} is missing: cannot describe {', '.join(only)}")
        return []
    release = os_release(root)
    distro_id = release.get("ID", "debian")
    distro = f"{distro_id}-{release['VERSION_ID']}" if release.get("VERSION_ID") else distro_id
    out = []
    packages = dpkg_packages(status)
    if only:
        missing = sorted(set(only) - {p["Package"] for p in packages})
        if missing:
            raise SystemExit(f"not installed here, so not described: {', '.join(missing)}")
        packages = [p for p in packages if p["Package"] in only]
    for p in packages:
        name, version, arch = p["Package"], p.get("Version", ""), p.get("Architecture", "")
        purl = f"pkg:deb/{distro_id}/{name}@{quote(version, safe='+~')}?arch={arch}&distro={distro}"
        properties = [{"name": "kaitopy:dpkg-source", "value": p["Source"]}] if p.get("Source") else []
        out.append(
            {
                "type": "library",
                "bom-ref": purl,
                "name": name,
                "version": version,
                "purl": purl,
                **({"properties": properties} if properties else {}),
            }
        )
    return out


def sbom(
    name: str,
    version: str,
    root: Path,
    site_packages: list[Path],
    lock: Path | None = None,
    epoch: str | None = None,
    only_deb: list[str] | None = None,
) -> dict[str, Any]:
    components = debian_components(root, only_deb)
    for sp in site_packages:
        components += python_components(sp)
    components.sort(key=lambda c: c["purl"])
    properties = []
    if lock is not None:
        digest = hashlib.sha256(lock.read_bytes()).hexdigest()
        properties.append({"name": "kaitopy:python-lock", "value": f"{lock.name} sha256:{digest}"})
    release = os_release(root)
    if release.get("PRETTY_NAME"):
        properties.append({"name": "kaitopy:os", "value": release["PRETTY_NAME"]})
    metadata: dict[str, Any] = {
        "tools": {"components": [{"type": "application", "name": TOOL}]},
        "component": {"type": "container", "bom-ref": name, "name": name, "version": version},
        "properties": properties,
    }
    if epoch:
        metadata["timestamp"] = datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"metadata": metadata, "components": components}
    # The serial number is derived from the content: the same image content, the same SBOM.
    serial = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(body, sort_keys=True))
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        **body,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the image's name")
    parser.add_argument("--version", default="dev")
    parser.add_argument("--root", type=Path, default=Path("/"), help="the file system to describe")
    parser.add_argument("--site-packages", type=Path, action="append", default=[])
    parser.add_argument("--lock", type=Path, default=None, help="the lock file pip installed from")
    parser.add_argument(
        "--only-deb", action="append", default=None, help="describe only these Debian packages (repeatable)"
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: stdout")
    args = parser.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    doc = sbom(args.name, args.version, args.root, args.site_packages, args.lock, epoch, args.only_deb)
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
