#!/usr/bin/env bash
# Installs the Debian packages the main job and the test suite need, only when one is missing
# (a warm machine runs no apt at all). Run as root on Debian 12; `make run` and `make test` call it.
set -euo pipefail
declare -A want=(
  [openssl]=openssl
  [go]=golang-go
  # Real local nodes: containerd + runc, the CNI plugins, iptables for kube-proxy and the egress guard.
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables
  [conntrack]=conntrack
  # Images: a loopback OCI registry, buildah to build our Dockerfiles, mmdebstrap for the base
  # image (no image hub is reachable), busybox-static for the tools image, skopeo to inspect.
  [docker-registry]=docker-registry
  [buildah]=buildah
  [mmdebstrap]=mmdebstrap
  [/bin/busybox]=busybox-static
  [skopeo]=skopeo
  [cc]=gcc
  [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev
  # Observability tests: a real Prometheus scraping the operator, promtool for the alert rules.
  [promtool]=prometheus
)
missing=()
for probe in "${!want[@]}"; do
  if [[ $probe == /* ]]; then [ -e "$probe" ] && continue; else command -v "$probe" >/dev/null && continue; fi
  # Go may come from a tarball install rather than Debian.
  [ "$probe" = go ] && [ -x /usr/local/go/bin/go ] && continue
  missing+=("${want[$probe]}")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "ensure-packages: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-packages: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "ensure-packages: done"
