"""An in-process stand-in for the API server at the extender's HTTP-client boundary (`PodAPI`)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from extender.kube import ApiError


class StubAPI:
    """Pods in a dict; patch merges (None deletes); bind sets spec.nodeName. No latency, no network."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.rv = 1

    def add(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        with self.lock:
            self.pods[(m["namespace"], m["name"])] = copy.deepcopy(pod)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, f"pod {namespace}/{name} not found")
            return copy.deepcopy(pod)

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = "") -> dict[str, Any]:
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, f"pod {namespace}/{name} not found")
            annotations = pod["metadata"].setdefault("annotations", {})
            for k, v in ((patch.get("metadata") or {}).get("annotations") or {}).items():
                if v is None:
                    annotations.pop(k, None)
                else:
                    annotations[k] = v
            self.rv += 1
            pod["metadata"]["resourceVersion"] = str(self.rv)
            return pod

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        """Like the API server: the Binding's annotations land on the pod in the same write as the node."""
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, f"pod {namespace}/{name} not found")
            if pod.get("spec", {}).get("nodeName"):
                raise ApiError(409, f"pod {namespace}/{name} is already assigned to a node")
            pod.setdefault("spec", {})["nodeName"] = node
            pod["metadata"].setdefault("annotations", {}).update(annotations or {})
            self.rv += 1
            pod["metadata"]["resourceVersion"] = str(self.rv)
