#!/usr/bin/env bash
# Builds the control-plane and node binaries with the Go toolchain through the Go module proxy, for machines
# that cannot download release archives. The result lands in $KAITOPY_BIN_DIR (default
# ~/.cache/kaitopy/bin/<kube-version>) and is reused on the next run.
#
# Kubernetes' own go.mod points each k8s.io/* staging module at ./staging, which only works inside
# its repository. A throwaway module that requires k8s.io/kubernetes and replaces every staging
# module with its published v0.x release builds the same commands from the module cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

bin_dir=${KAITOPY_BIN_DIR:-$HOME/.cache/kaitopy/bin/$KUBE_VERSION}
work=${KAITOPY_BUILD_DIR:-$HOME/.cache/kaitopy/build/$KUBE_VERSION}
mkdir -p "$bin_dir" "$work"

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy crictl kwok)
missing=()
for b in "${want[@]}"; do [ -x "$bin_dir/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "build-binaries: all binaries present in $bin_dir"
  exit 0
fi
echo "build-binaries: building ${missing[*]} into $bin_dir (first build takes a while on 2 cores)"

staging_minor=v0.${KUBE_VERSION#v1.}
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission)

mod="$work/kube"
mkdir -p "$mod"
{
  echo "module kaitopy.local/kubebuild"
  echo
  echo "go 1.23.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $staging_minor"; done
  # Required (never imported by the commands we build) and not published for every patch release.
  echo "	k8s.io/sample-apiserver => k8s.io/sample-apiserver $SAMPLE_APISERVER_VERSION"
  echo ")"
} >"$mod/go.mod"
cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
cd "$mod"
go mod tidy -e >/dev/null 2>&1 || true
go mod download

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() {  # name package
  local name=$1 pkg=$2
  [ -x "$bin_dir/$name" ] && return 0
  local t0=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$name.tmp" "$pkg"
  mv "$bin_dir/$name.tmp" "$bin_dir/$name"
  echo "build-binaries: $name in $((SECONDS - t0)) s"
}
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
# The node agents of the `local` provider's real nodes (containerd and runc come from Debian).
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build etcd go.etcd.io/etcd/server/v3

if [ ! -x "$bin_dir/kwok" ]; then
  t0=$SECONDS
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$work/gobin/kwok" "$bin_dir/kwok"
  echo "build-binaries: kwok in $((SECONDS - t0)) s"
fi
# crictl: how the local provider removes a node's pod sandboxes through the CRI on teardown.
if [ ! -x "$bin_dir/crictl" ]; then
  t0=$SECONDS
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  mv "$work/gobin/crictl" "$bin_dir/crictl"
  echo "build-binaries: crictl in $((SECONDS - t0)) s"
fi
echo "build-binaries: done in $bin_dir"
