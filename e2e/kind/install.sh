#!/usr/bin/env bash
# Create a kind cluster (1 control plane + 2 workers) and install gpupool with a fake GPU inventory, then
# point the e2e suite at it:
#
#   e2e/kind/install.sh
#   GPUPOOL_E2E_KUBECONFIG=$HOME/.cache/gpupool/kind-gpupool-e2e.kubeconfig .venv/bin/pytest tests/e2e -m e2e
#
# Needs: docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind, kubectl, helm (e2e/build.sh builds
# kubectl 1.36 and helm 3.21 into $GPUPOOL_E2E_BIN; they are used when found there).
# Environment:
#   KIND_CLUSTER_NAME   cluster name (default gpupool-e2e)
#   GPUPOOL_NAMESPACE   namespace of the Helm release (default gpupool-system)
#   GPUPOOL_IMAGE       a locally built gpupool image to `kind load` before installing (optional); pass the
#                       matching --set image.* flags as extra arguments
#   KIND_NODE_IMAGE     kind node image (default: kind's own default)
# Extra arguments are passed to `helm install`. Tear down: kind delete cluster --name gpupool-e2e
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NAME=${KIND_CLUSTER_NAME:-gpupool-e2e}
NS=${GPUPOOL_NAMESPACE:-gpupool-system}
BIN=${GPUPOOL_E2E_BIN:-$HOME/.cache/gpupool/k8s-v1.36.3/bin}
KUBECONFIG_OUT=${GPUPOOL_E2E_KUBECONFIG:-$HOME/.cache/gpupool/kind-$NAME.kubeconfig}
export PATH="$BIN:$PATH"

die() { echo "install.sh: $*" >&2; exit 1; }
for tool in kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool not found (kind: https://kind.sigs.k8s.io; kubectl/helm: e2e/build.sh)"
done
[ -d "$ROOT/charts/gpupool" ] || die "chart $ROOT/charts/gpupool not found"

if kind get clusters 2>/dev/null | grep -qx "$NAME"; then
  echo "kind cluster $NAME exists; reusing it"
else
  kind create cluster --name "$NAME" --config "$HERE/cluster.yaml" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
mkdir -p "$(dirname "$KUBECONFIG_OUT")"
kind get kubeconfig --name "$NAME" > "$KUBECONFIG_OUT"
export KUBECONFIG="$KUBECONFIG_OUT"

if [ -n "${GPUPOOL_IMAGE:-}" ]; then
  kind load docker-image "$GPUPOOL_IMAGE" --name "$NAME"
fi

kubectl wait --for=condition=Ready nodes --all --timeout=180s
helm install gpupool "$ROOT/charts/gpupool" --namespace "$NS" --create-namespace \
  --set fakeInventory.enabled=true --wait --timeout 5m "$@"

echo
echo "gpupool installed on kind cluster $NAME. Run the e2e suite against it with:"
echo "  export GPUPOOL_E2E_KUBECONFIG=$KUBECONFIG_OUT"
echo "  .venv/bin/pytest tests/e2e -m e2e"
