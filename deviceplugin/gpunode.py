"""Publishing the node's inventory: the GPUNode object (status subresource) and the Node's labels.

GPUNode (`gpupool.io/v1alpha1`, cluster-scoped, name = node) status written here::

    status:
      gpus: [{uuid, index, model, memoryMiB, health, numa}]   # gpupool.objects.gpunode_status_gpus
      heartbeatTime: "2025-01-01T00:00:00Z"
      agentEndpoint: "10.0.0.5:9403"                            # remote slices are served through it
      slotsPerGPU: 32
      remoteSlots: 16

Node labels: `gpupool.io/gpu-model` (the first GPU's model, made a valid label value) and
`gpupool.io/gpu-count`. A missing Node object (kwok not yet up, unit tests) is logged once, not fatal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deviceplugin.kube import Kube, KubeError
from gpupool import objects
from gpupool.inventory import GPUInfo
from gpupool.timefmt import now_rfc3339

log = logging.getLogger(__name__)

MODEL_LABEL = "gpupool.io/gpu-model"
COUNT_LABEL = "gpupool.io/gpu-count"


def label_value(text: str) -> str:
    """A valid label value: [A-Za-z0-9._-], at most 63 chars, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return value.strip("-._")


@dataclass
class Publisher:
    """Creates/updates the GPUNode of one node and labels its Node."""

    kube: Kube
    node: str
    slots_per_gpu: int
    remote_slots: int
    agent_endpoint: str = ""
    #: whether the GPUNode exists: None unknown (patch, create on 404), False known missing (create first)
    exists: bool | None = None
    _labelled: tuple[str, str] | None = None
    _node_missing_logged: bool = False

    def status(self, gpus: Sequence[GPUInfo]) -> dict[str, Any]:
        return {
            "gpus": objects.gpunode_status_gpus(gpus),
            "heartbeatTime": now_rfc3339(),
            "agentEndpoint": self.agent_endpoint,
            "slotsPerGPU": self.slots_per_gpu,
            "remoteSlots": self.remote_slots,
        }

    def publish(self, gpus: Sequence[GPUInfo]) -> dict[str, Any]:
        """Write the GPUNode status (creating the GPUNode the first time it is missing) and the Node labels.

        A heartbeat of a known GPUNode is one status patch; labels are written only when they change. A
        GPUNode known to be missing (`exists` False, from the multi-node agent's first list) is created
        without trying the patch first.
        """
        if self.exists is False:
            self._create()
            result = self.kube.patch_gpunode_status(self.node, self.status(gpus))
        else:
            try:
                result = self.kube.patch_gpunode_status(self.node, self.status(gpus))
            except KubeError as exc:
                if exc.status != 404:
                    raise
                self._create()
                result = self.kube.patch_gpunode_status(self.node, self.status(gpus))
        self.exists = True
        self._label(gpus)
        return result

    def _create(self) -> None:
        try:
            self.kube.create_gpunode(self.node)
            log.info("created GPUNode %s", self.node)
        except KubeError as exc:
            if exc.status != 409:
                raise

    def _label(self, gpus: Sequence[GPUInfo]) -> None:
        wanted = (label_value(gpus[0].model) if gpus else "", str(len(gpus)))
        if wanted == self._labelled:
            return
        try:
            self.kube.patch_node_labels(self.node, {MODEL_LABEL: wanted[0] or None, COUNT_LABEL: wanted[1]})
            self._labelled = wanted
        except KubeError as exc:
            if exc.status == 404:
                if not self._node_missing_logged:
                    log.warning("Node %s does not exist (yet); labels not written", self.node)
                    self._node_missing_logged = True
                return
            raise
