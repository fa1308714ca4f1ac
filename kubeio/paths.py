"""The API paths every adapter lists and watches (one home: the extender's and the controller's watches use these)."""

from __future__ import annotations

from gpupool import objects

PODS = "/api/v1/pods"
NODES = "/api/v1/nodes"
NAMESPACES = "/api/v1/namespaces"
GPUNODES = f"/apis/{objects.API_VERSION}/{objects.GPUNODE_PLURAL}"
GPUQUEUES = f"/apis/{objects.API_VERSION}/{objects.GPUQUEUE_PLURAL}"
