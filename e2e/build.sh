#!/usr/bin/env bash
# Build the binaries of gpupool's e2e tier (docs/e2e.md, shared recipe: e2e-control-plane.md §1, §2, §8, §11):
#   kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, kubelet (Kubernetes $K8S, wrapper e2e/k8sbin/)
#   etcd, etcdctl                                                      (etcd $ETCD, wrapper e2e/etcdbin/)
#   kwok, helm                                        (pinned versions; kwok with its watch resume: build_kwok)
# into ${GPUPOOL_E2E_BIN:-$HOME/.cache/gpupool/k8s-$K8S/bin}. Binaries already present at the right version are
# skipped. Never commit the binaries; the wrappers' go.mod/go.sum are the version pin. As root, it also installs the
# Debian packages the real node needs (containerd, runc, CNI plugins, busybox-static; e2e/realnode.py) if missing.
#
# Usage: e2e/build.sh [--regen] [--force]
#   --regen   re-derive e2e/k8sbin/go.mod and e2e/etcdbin/go.mod from the pins below (go mod tidy; needs the proxy
#             and the checksum database). Done automatically when a wrapper has no go.sum yet.
#   --force   rebuild even when the binaries are present at the right version.
# Environment: GPUPOOL_E2E_BIN (output dir), GO (go binary), GPUPOOL_E2E_GOFLAGS (default "-p=2"),
#              GPUPOOL_E2E_NICE (default 10; niceness of the go processes).
set -euo pipefail

K8S=v1.36.3
STG=v0.${K8S#v1.}            # staging modules: Kubernetes v1.Y.Z <=> v0.Y.Z
ETCD=v3.6.14
KWOK=v0.8.0
HELM=v3.21.4
K8S_GO=1.26.0                # `go` and `godebug` lines copied from Kubernetes' own go.mod (§1.3)
K8S_GODEBUG=default=go1.26
# helm's default Capabilities.KubeVersion (its Makefile derives it from its client-go, v0.36.x => 1.36)
HELM_K8S_LDFLAGS="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36"
HELM_K8S_LDFLAGS+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=36"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${GPUPOOL_E2E_BIN:-$HOME/.cache/gpupool/k8s-$K8S/bin}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
NICE=${GPUPOOL_E2E_NICE:-10}

REGEN=0
FORCE=0
for a in "$@"; do
  case "$a" in
    --regen) REGEN=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $a" >&2; exit 2 ;;
  esac
done

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$GO" ] || die "no Go toolchain found (set GO=/path/to/go; Go >= 1.26 needed for Kubernetes $K8S and kwok $KWOK)"
GOV=$("$GO" env GOVERSION)
case "$GOV" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "$GO is $GOV; Kubernetes $K8S and kwok $KWOK need Go >= 1.26 (see docs/e2e.md)" ;;
esac

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GPUPOOL_E2E_GOFLAGS:--p=2}"
gocmd() { nice -n "$NICE" "$GO" "$@"; }

mkdir -p "$BIN" || die "cannot create $BIN"
log "go: $GO ($GOV), GOFLAGS=$GOFLAGS, output: $BIN"

# has_dep FILE MODULE VERSION: the binary's embedded build info names MODULE at VERSION (as main module or dep).
has_dep() {
  [ -x "$1" ] || return 1
  local info
  info=$("$GO" version -m "$1" 2>/dev/null) || return 1
  awk -v m="$2" -v v="$3" '($1=="mod"||$1=="dep") && $2==m && $3==v {f=1} END {exit !f}' <<<"$info"
}

# ---------------------------------------------------------------- Kubernetes (§1)
K8S_CMDS=(kube-apiserver kube-scheduler kube-controller-manager kubectl kubelet)
# Staging modules of v1.36 (33). Listing one that is not in the build graph is harmless.
K8S_STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
  code-generator component-base component-helpers controller-manager cri-api cri-client cri-streaming
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator kube-controller-manager
  kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission sample-apiserver
  sample-cli-plugin sample-controller streaming)

k8s_ok() {
  local c="$1" f="$BIN/$1"
  has_dep "$f" k8s.io/kubernetes "$K8S" || return 1
  local out  # capture first: `cmd | grep -q` under pipefail fails when grep exits early (SIGPIPE)
  if [ "$c" = kubectl ]; then
    out=$("$f" version --client 2>/dev/null) || return 1
    grep -q "^Client Version: $K8S\$" <<<"$out" || return 1
  else
    out=$("$f" --version 2>/dev/null) || return 1
    [ "$out" = "Kubernetes $K8S" ] || return 1
  fi
}

k8s_regen() {
  log "k8sbin: deriving go.mod for k8s.io/kubernetes $K8S (staging $STG)"
  (
    cd "$HERE/k8sbin"
    rm -f go.mod go.sum
    gocmd mod init example.invalid/k8sbin >/dev/null 2>&1
    local args=()
    for m in "${K8S_STAGING[@]}"; do args+=("-replace=k8s.io/$m=k8s.io/$m@$STG"); done
    for c in "${K8S_CMDS[@]}"; do args+=("-tool=k8s.io/kubernetes/cmd/$c"); done
    gocmd mod edit -go="$K8S_GO" -godebug="$K8S_GODEBUG" -require="k8s.io/kubernetes@$K8S" "${args[@]}"
    GOFLAGS="$GOFLAGS -mod=mod" gocmd mod tidy
  ) || die "k8sbin: go mod tidy failed (check 'go env GOPROXY GOSUMDB' and network access to the module proxy)"
}

build_k8s() {
  local todo=()
  for c in "${K8S_CMDS[@]}"; do
    if [ "$FORCE" = 0 ] && k8s_ok "$c"; then log "ok: $c $K8S already in $BIN"; else todo+=("$c"); fi
  done
  [ "${#todo[@]}" = 0 ] && return 0
  if [ "$REGEN" = 1 ] || [ ! -s "$HERE/k8sbin/go.sum" ]; then k8s_regen; fi
  local minor=${K8S#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local pkgs=()
  for c in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  log "building ${todo[*]} ($K8S); cold: about 6 min on 2 cores (docs/e2e.md)"
  (cd "$HERE/k8sbin" && GOFLAGS="$GOFLAGS -mod=readonly" gocmd build -trimpath -ldflags "$ld" -o "$BIN/" "${pkgs[@]}") ||
    die "building ${todo[*]} failed (see the go output above)"
  for c in "${todo[@]}"; do k8s_ok "$c" || die "$BIN/$c was built but does not report $K8S"; done
  log "built: ${todo[*]}"
}

# ---------------------------------------------------------------- etcd (§2)
etcd_regen() {
  log "etcdbin: deriving go.mod for etcd $ETCD"
  (
    cd "$HERE/etcdbin"
    rm -f go.mod go.sum
    gocmd mod init example.invalid/etcdbin >/dev/null 2>&1
    gocmd mod edit -go=1.25.0 -require="go.etcd.io/etcd/server/v3@$ETCD" -require="go.etcd.io/etcd/etcdctl/v3@$ETCD" \
      -tool=go.etcd.io/etcd/server/v3 -tool=go.etcd.io/etcd/etcdctl/v3
    GOFLAGS="$GOFLAGS -mod=mod" gocmd mod tidy
  ) || die "etcdbin: go mod tidy failed (check 'go env GOPROXY GOSUMDB')"
}

build_etcd() {
  if [ "$FORCE" = 0 ] && has_dep "$BIN/etcd" go.etcd.io/etcd/server/v3 "$ETCD" &&
     has_dep "$BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3 "$ETCD"; then
    log "ok: etcd, etcdctl $ETCD already in $BIN"; return 0
  fi
  if [ "$REGEN" = 1 ] || [ ! -s "$HERE/etcdbin/go.sum" ]; then etcd_regen; fi
  log "building etcd, etcdctl ($ETCD)"
  (
    cd "$HERE/etcdbin"
    export GOFLAGS="$GOFLAGS -mod=readonly"
    gocmd build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3 &&
      gocmd build -trimpath -ldflags "-s -w" -o "$BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3
  ) || die "building etcd failed (see the go output above)"
  local out
  out=$("$BIN/etcd" --version) || die "$BIN/etcd --version failed"
  grep -q "^etcd Version: ${ETCD#v}\$" <<<"$out" || die "$BIN/etcd does not report ${ETCD#v}"
  log "built: etcd, etcdctl"
}

# ---------------------------------------------------------------- kwok, helm (§8, §11)
go_install() { # NAME MODULE PKG VERSION [EXTRA_LDFLAGS [VERSION_CHECK_CMD...]]
  local name="$1" mod="$2" pkg="$3" ver="$4" extra="${5:-}"
  shift 5 2>/dev/null || shift $#
  local check=("$@")
  installed() {
    has_dep "$BIN/$name" "$mod" "$ver" || return 1
    [ "${#check[@]}" = 0 ] && return 0
    local out
    out=$("$BIN/$name" "${check[@]}" 2>/dev/null) && [ "$out" = "$ver" ]
  }
  if [ "$FORCE" = 0 ] && installed; then log "ok: $name $ver already in $BIN"; return 0; fi
  log "go install $pkg@$ver"
  GOBIN="$BIN" gocmd install -trimpath -ldflags "-s -w $extra" "$pkg@$ver" || die "go install $pkg@$ver failed"
  installed || die "$BIN/$name does not report $mod $ver"
}

# kwok, built with one change: its informers (pkg/utils/informer, Option.setup) set resourceVersion=0 on every list
# AND watch, so each time the API server dropped kwok's Node watch (a reader that fell behind), the next watch began
# with every Node again as an ADDED event: 5,000 watch events at 5,000 nodes, several times a bench phase on a
# loaded box (docs/e2e.md "kwok's Node watch"). The built kwok keeps the resourceVersion its reflector asks for and
# sets 0 only where none was given (lists; tests/e2e/test_control_plane.py test_kwok_resumes_...). Its version
# (`kwok --version`, its user agent) says so: v0.8.0+gpupool.watch-resume.
KWOK_MARK="${KWOK#v}+gpupool.watch-resume"
kwok_ok() {
  [ -x "$BIN/kwok" ] || return 1
  local out
  out=$("$BIN/kwok" --version 2>/dev/null) || return 1
  [[ "$out" == "kwok version v$KWOK_MARK "* ]]
}

build_kwok() {
  if [ "$FORCE" = 0 ] && kwok_ok; then log "ok: kwok $KWOK (watch resume) already in $BIN"; return 0; fi
  local dir tmp f
  dir=$(gocmd mod download -json "sigs.k8s.io/kwok@$KWOK" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') ||
    die "go mod download sigs.k8s.io/kwok@$KWOK failed"
  [ -d "$dir" ] || die "no module directory for sigs.k8s.io/kwok@$KWOK"
  tmp=$(mktemp -d) && cp -r "$dir/." "$tmp/" && chmod -R u+w "$tmp" || die "copying kwok $KWOK's source failed"
  f="$tmp/pkg/utils/informer/event.go"
  sed -i 's/^\tif !o.EnableListPager || o.EnableStreamWatch {$/\tif (!o.EnableListPager || o.EnableStreamWatch) \&\& opts.ResourceVersion == "" {/' "$f"
  grep -q 'o.EnableStreamWatch) && opts.ResourceVersion == "" {' "$f" ||
    die "kwok $KWOK: $f no longer has the line the watch-resume change edits"
  log "building kwok $KWOK (watch resume)"
  (cd "$tmp" && GOFLAGS="$GOFLAGS -mod=readonly" gocmd build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_MARK" \
    -o "$BIN/kwok" ./cmd/kwok) || die "building kwok $KWOK failed (see the go output above)"
  rm -rf "$tmp"
  kwok_ok || die "$BIN/kwok --version does not report v$KWOK_MARK"
}

# ---------------------------------------------------------------- the real node's runtime (Debian packages)
REALNODE_PKGS=(containerd runc containernetworking-plugins busybox-static)
install_realnode_packages() {
  local need=() p
  for p in "${REALNODE_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  [ "${#need[@]}" = 0 ] && { log "ok: ${REALNODE_PKGS[*]} installed"; return 0; }
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "not installing ${need[*]} (needs root and apt-get): the realnode tests will skip and say why"; return 0
  fi
  log "apt-get install ${need[*]} (the real node's runtime)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" ||
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; }
  } >/dev/null || log "apt-get install ${need[*]} failed: the realnode tests will skip and say why"
}

start=$(date +%s)
install_realnode_packages
build_etcd
# kwok v0.8.0 has no built-in stages: the e2e fixture concatenates the stage files from its module directory.
build_kwok
go_install helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM $HELM_K8S_LDFLAGS" version --template '{{.Version}}'
build_k8s
log "all binaries present in $BIN ($(($(date +%s) - start)) s)"
