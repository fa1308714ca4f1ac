"""A bind whose pod a relist lacked, and whose read-back failed (the interleaving harness, seed 2159).

The pods watch expired and its relist lacked the pod while the extender's Binding was landing; the bind then asks
the API server whether the pod is gone (its DELETED event went with the old watch). When that read fails, the
pod stays cached and held, and it used to stay so until the next relist (capacity held by a deleted pod). It is
now `unconfirmed`, and `recheck_unconfirmed` (the extender's recheck thread) reads it again until it can tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extender.kube import ApiError
from extender.main import build
from extender.service import PoolService
from extender.settings import ExtenderSettings
from tests.extender.conftest import KEY, gpunode, node, pod
from tests.extender.stubs import StubAPI

NODE = "n0"


class RelistDuringBind(StubAPI):
    """The Binding lands; meanwhile the pod is deleted (or not) and the pods watch relists without it (the extender
    never saw the pod: its ADDED event went with the expired watch); reads fail from then on while `failing`."""

    def __init__(self, *, delete: bool) -> None:
        super().__init__()
        self.delete = delete
        self.failing = False
        self.service: PoolService | None = None

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        super().bind_pod(namespace, name, uid, node, annotations)
        if self.delete:
            with self.lock:
                del self.pods[(namespace, name)]
        assert self.service is not None
        self.service.on_pod_list([])  # the relist: the pod is not in it (deleted, or newer than the list)
        self.failing = True

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if self.failing:
            raise ApiError(500, "injected: the API server did not answer")
        return super().get_pod(namespace, name)


def start(api: StubAPI, p: dict[str, Any], *, listed: bool) -> PoolService:
    """An extender over `api` with one node of one GPU and pod `p` (in its pods list when `listed`: else its
    ADDED event never arrived and a bind reads it from the API server)."""
    s = build(ExtenderSettings(_cli_parse_args=False), api=api, key=KEY).service
    s.on_node_list([node(NODE)])
    s.on_gpunode_list([gpunode(NODE, gpus=1)])
    api.add(p)
    s.on_pod_list([p] if listed else [])
    return s


def setup(delete: bool) -> tuple[PoolService, RelistDuringBind, dict[str, Any]]:
    api = RelistDuringBind(delete=delete)
    p = pod("p", compute=50)
    api.service = start(api, p, listed=False)
    return api.service, api, p


def test_a_deleted_pod_whose_read_back_failed_is_read_again_and_frees_its_slices() -> None:
    s, api, p = setup(delete=True)
    uid = p["metadata"]["uid"]
    assert s.bind("p", "default", uid, NODE) == ""
    assert uid in s.unconfirmed and uid in s.pods and s.ledger.holding(uid) is not None  # held: cannot tell yet
    assert s.recheck_unconfirmed() == 1  # still no answer: still held
    assert s.ledger.holding(uid) is not None
    api.failing = False
    assert s.recheck_unconfirmed() == 0
    assert uid not in s.pods and s.ledger.holding(uid) is None and not s.unconfirmed
    assert s.ledger.gpu(f"GPU-{NODE}-0").used_compute == 0


def test_a_pod_that_exists_is_confirmed_and_kept() -> None:
    s, api, p = setup(delete=False)
    uid = p["metadata"]["uid"]
    assert s.bind("p", "default", uid, NODE) == ""
    assert uid in s.unconfirmed
    api.failing = False
    assert s.recheck_unconfirmed() == 0
    assert uid in s.pods and s.ledger.holding(uid) is not None


def test_the_watch_confirms_before_the_recheck() -> None:
    """A relist or an event that has the pod settles it: the recheck has nothing left to read."""
    s, api, p = setup(delete=False)
    uid = p["metadata"]["uid"]
    assert s.bind("p", "default", uid, NODE) == ""
    s.on_pod_event("MODIFIED", api.pods[("default", "p")])
    assert not s.unconfirmed and s.recheck_unconfirmed() == 0 and s.ledger.holding(uid) is not None


class LostReply(StubAPI):
    """The Binding's reply is lost (500) whether or not it was applied (`applied`); reads fail while `failing`."""

    def __init__(self, *, applied: bool) -> None:
        super().__init__()
        self.applied = applied
        self.failing = False

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        if self.applied:
            super().bind_pod(namespace, name, uid, node, annotations)
        self.failing = True
        raise ApiError(500, "injected: reply lost")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if self.failing:
            raise ApiError(500, "injected: the API server did not answer")
        return super().get_pod(namespace, name)


def lost_reply(applied: bool) -> tuple[PoolService, LostReply, dict[str, Any]]:
    api = LostReply(applied=applied)
    p = pod("p", compute=60)
    return start(api, p, listed=True), api, p


def test_a_binding_of_unknown_outcome_keeps_its_slices_until_the_pod_is_read() -> None:
    """The interleaving harness, seed 9866: the reply of an applied Binding was lost and the read-back failed;
    the bind was rolled back, and another pod's assignment took the same GPU (the API objects double-booked it)."""
    for applied in (True, False):
        s, api, p = lost_reply(applied)
        uid = p["metadata"]["uid"]
        answer = s.bind("p", "default", uid, NODE)
        assert "may have landed" in answer and uid in s.unconfirmed and not s.inflight
        assert s.ledger.holding(uid) is not None  # never released on a guess
        other = pod("other", compute=60)
        api.failing = False
        api.add(other)
        s.on_pod_event("ADDED", other)
        assert s.filter(other, [NODE]).passing == []  # its capacity is not given away meanwhile
        assert s.recheck_unconfirmed() == 0
        held = s.ledger.holding(uid)
        if applied:  # it landed: held by its signed assignment, as the watch will show it
            assert held is not None and held.node == NODE
        else:  # it did not: the slices are free, the pod schedules again
            assert held is None and s.filter(other, [NODE]).passing == [NODE]
