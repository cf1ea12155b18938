#!/usr/bin/env bash
# Puts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy and kwok into the
# cache dir (~/.cache/kaitopy/bin/<kube-version>), trying in order:
#   1. $KAITOPY_K8S_BIN_DIR (used as is by hack/localcluster.py; nothing to do here),
#   2. what is already in the cache dir or on PATH at the pinned versions,
#   3. the official release downloads, where the network allows,
#   4. a build with the Go toolchain through the Go module proxy (hack/build-binaries.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
bin_dir=${KAITOPY_BIN_DIR:-$HOME/.cache/kaitopy/bin/$KUBE_VERSION}
mkdir -p "$bin_dir"
names=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy crictl kwok)

if [ -n "${KAITOPY_K8S_BIN_DIR:-}" ]; then
  echo "ensure-binaries: using KAITOPY_K8S_BIN_DIR=$KAITOPY_K8S_BIN_DIR"; exit 0
fi

have_all() { for n in "${names[@]}"; do [ -x "$bin_dir/$n" ] || return 1; done; }
have_all && { echo "ensure-binaries: cached in $bin_dir"; exit 0; }

# 2. PATH, only at the exact pinned version (a different apiserver would make results unrepeatable).
for n in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  p=$(command -v "$n" || true)
  if [ -n "$p" ] && [ ! -x "$bin_dir/$n" ] && "$p" --version 2>/dev/null | grep -q "$KUBE_VERSION\$"; then
    ln -sf "$p" "$bin_dir/$n"
  fi
done
have_all && exit 0

# 3. Release downloads. Short timeouts: on a closed network the answer is an immediate refusal.
arch=$(go env GOARCH 2>/dev/null || echo amd64)
fetch() { curl -fsSL --connect-timeout 5 --max-time 600 -o "$2" "$1"; }
if curl -fsS --connect-timeout 5 --max-time 10 -o /dev/null "https://dl.k8s.io/release/$KUBE_VERSION/bin/linux/$arch/kubectl.sha256" 2>/dev/null; then
  for n in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    [ -x "$bin_dir/$n" ] || { fetch "https://dl.k8s.io/release/$KUBE_VERSION/bin/linux/$arch/$n" "$bin_dir/$n.tmp" && chmod +x "$bin_dir/$n.tmp" && mv "$bin_dir/$n.tmp" "$bin_dir/$n"; } || true
  done
  if [ ! -x "$bin_dir/etcd" ]; then
    t=$(mktemp -d)
    fetch "https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/etcd-$ETCD_VERSION-linux-$arch.tar.gz" "$t/etcd.tgz" \
      && tar -xzf "$t/etcd.tgz" -C "$t" && mv "$t/etcd-$ETCD_VERSION-linux-$arch/etcd" "$bin_dir/etcd" || true
    rm -rf "$t"
  fi
  [ -x "$bin_dir/kwok" ] || { fetch "https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION/kwok-linux-$arch" "$bin_dir/kwok.tmp" && chmod +x "$bin_dir/kwok.tmp" && mv "$bin_dir/kwok.tmp" "$bin_dir/kwok"; } || true
fi
have_all && { echo "ensure-binaries: downloaded into $bin_dir"; exit 0; }

# 4. Build from the Go module proxy.
exec bash "$here/build-binaries.sh"
