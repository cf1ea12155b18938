#!/usr/bin/env bash
# Puts helm ($HELM_VERSION from versions.env) at ~/.cache/kaitopy/bin/tools/helm and prints its path:
#   1. the cached binary, when it reports the pinned version,
#   2. helm on PATH at the pinned version (linked into the cache),
#   3. a build with the Go toolchain through the Go module proxy (a few minutes on 2 cores, once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
tools=${KAITOPY_TOOLS_DIR:-$HOME/.cache/kaitopy/bin/tools}
helm="$tools/helm"
mkdir -p "$tools"
# `go install` without -ldflags reports "v3.22" (major.minor only), a release build "v3.22.0".
pinned() { "$1" version --template '{{.Version}}' 2>/dev/null | grep -Eq "^${HELM_VERSION%.*}(\.|$)"; }

if [ -x "$helm" ] && pinned "$helm"; then echo "$helm"; exit 0; fi
p=$(command -v helm || true)
if [ -n "$p" ] && pinned "$p"; then ln -sf "$p" "$helm"; echo "$helm"; exit 0; fi
command -v go >/dev/null || { echo "ensure-helm: no helm $HELM_VERSION and no Go toolchain to build it" >&2; exit 2; }
echo "ensure-helm: building helm $HELM_VERSION with $(go version) (a few minutes)" >&2
GOBIN="$tools" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
pinned "$helm" || { echo "ensure-helm: $helm does not report $HELM_VERSION" >&2; exit 1; }
echo "$helm"
