#!/usr/bin/env bash
# Builds the control-plane binaries from official sources through the Go module
# proxy and caches them by version. Safe to re-run: finished builds are skipped.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
KARPENTER_VERSION=${KARPENTER_VERSION:-v1.15.0}
CACHE=${DISTILLERY_CACHE:-$HOME/.cache/distillery}
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build_etcd() {
  local out=$CACHE/bin/etcd-$ETCD_VERSION
  [ -x "$out/etcd" ] && return 0
  log "etcd $ETCD_VERSION: building (wrapper module: etcd's own go.mod has replace directives)"
  local w=$CACHE/build/etcd-$ETCD_VERSION
  mkdir -p "$w" "$out"
  (cd "$w"
   [ -f go.mod ] || go mod init local/etcdbin >/dev/null 2>&1
   go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
   go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$out/etcd.tmp" "$out/etcd"
  log "etcd: done"
}

build_kubernetes() {
  local out=$CACHE/bin/kubernetes-$K8S_VERSION
  local cmds="kube-apiserver kube-controller-manager kube-scheduler kubectl"
  local missing=0
  for c in $cmds; do [ -x "$out/$c" ] || missing=1; done
  [ $missing = 0 ] && return 0
  local staging=v0.${K8S_VERSION#v1.}
  local minor; minor=$(cut -d. -f2 <<<"$K8S_VERSION")
  local w=$CACHE/build/kubernetes-$K8S_VERSION
  mkdir -p "$w" "$out"
  log "kubernetes $K8S_VERSION: resolving modules (staging modules pinned to $staging)"
  (cd "$w"
   [ -f go.mod ] || go mod init local/k8sbins >/dev/null 2>&1
   local real_mod
   real_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
   # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
   # with local paths; a consumer must pin each one to its published tag.
   for m in $(grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$real_mod" | awk '{print $1}' | sort -u); do
     go mod edit -replace="$m=$m@$staging"
   done
   go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
   local pkgs=""
   for c in $cmds; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c"; done
   cat > tools.go <<GO
//go:build tools

package tools

import (
$(for c in $cmds; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done)
)
GO
   go mod tidy
   local ld="-s -w"
   for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
     ld="$ld -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
   done
   log "kubernetes: compiling $cmds (the longest step of a cold build: 15-30 min on 2 cores)"
   go build -v -trimpath -ldflags "$ld" -o "$out/" $pkgs 2>&1 | awk '{n++} n%200==0 {printf "[build] kubernetes: %d packages compiled\n", n > "/dev/stderr"}')
  for c in $cmds; do [ -x "$out/$c" ] || { log "kubernetes: $c missing after build"; exit 1; }; done
  log "kubernetes: done"
}

build_kwok() {
  local out=$CACHE/bin/kwok-$KWOK_VERSION
  [ -x "$out/kwok" ] && [ -d "$out/stages" ] && return 0
  log "kwok $KWOK_VERSION: building"
  mkdir -p "$out"
  GOBIN=$out go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # The stage definitions ship in the module, not in the binary; keep a copy
  # beside it so a cleaned module cache does not break a cached install.
  local src
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out/stages.tmp" && cp -r "$src/kustomize/stage" "$out/stages.tmp" && chmod -R u+w "$out/stages.tmp"
  mv "$out/stages.tmp" "$out/stages"
  log "kwok: done"
}

build_helm() {
  local out=$CACHE/bin/helm-$HELM_VERSION
  [ -x "$out/helm" ] && return 0
  log "helm $HELM_VERSION: building"
  mkdir -p "$out"
  GOBIN=$out go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  log "helm: done"
}

# Not in the default targets: only the Kueue tests and `dev-cluster up --kueue`
# need it, and they ask for it (binaries.ensure_built(("kueue",))).
build_kueue() {
  local out=$CACHE/bin/kueue-$KUEUE_VERSION
  [ -x "$out/kueue" ] && [ -d "$out/crd" ] && [ -f "$out/webhooks.yaml" ] && return 0
  log "kueue $KUEUE_VERSION: building (about 15 min cold on 2 busy cores)"
  mkdir -p "$out"
  GOBIN=$out go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # The CRDs and webhook configurations ship in the module, not in the binary; keep them beside it
  # like kwok's stages.
  local src
  src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out/crd" "$out/crd.tmp" && cp -r "$src/config/components/crd/bases" "$out/crd.tmp" && chmod -R u+w "$out/crd.tmp"
  mv "$out/crd.tmp" "$out/crd"
  cp "$src/config/components/webhook/manifests.yaml" "$out/webhooks.yaml.tmp" && chmod u+w "$out/webhooks.yaml.tmp"
  mv "$out/webhooks.yaml.tmp" "$out/webhooks.yaml"
  log "kueue: done"
}

# Karpenter's kwok cloud provider (kwok/main.go) with the module's CRDs; built on first use like Kueue.
# v1.15 needs Go >= 1.26.9: the go command fetches that toolchain through the module proxy.
build_karpenter() {
  local out=$CACHE/bin/karpenter-$KARPENTER_VERSION
  [ -x "$out/karpenter-kwok" ] && [ -f "$out/crd/karpenter.kwok.sh_kwoknodeclasses.yaml" ] && return 0
  log "karpenter $KARPENTER_VERSION (kwok provider): building with GOTOOLCHAIN=go1.27.3"
  mkdir -p "$out"
  GOTOOLCHAIN=go1.27.3 GOBIN=$out go install -trimpath -ldflags "-s -w" "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION"
  mv "$out/kwok" "$out/karpenter-kwok"
  local src
  src=$(GOTOOLCHAIN=go1.27.3 go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out/crd" "$out/crd.tmp" && mkdir "$out/crd.tmp"
  cp "$src"/kwok/charts/crds/*.yaml "$src"/kwok/apis/crds/*.yaml "$out/crd.tmp/" && chmod -R u+w "$out/crd.tmp"
  mv "$out/crd.tmp" "$out/crd"
  log "karpenter: done"
}

targets=${*:-etcd kubernetes kwok helm}
for t in $targets; do "build_$t"; done
