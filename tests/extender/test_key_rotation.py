"""Key rotation end to end over the mounted Secret's files (charts/gpupool/README.md "Rotating the signing key"):
add a verification key, switch the signing key, retire the old one. The extender and the controller read the
same directory, as in the chart; neither pauses scheduling nor distrusts a running pod at any step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.runtime import Controller
from controller.settings import ControllerSettings
from gpupool import assignment, resources
from gpupool.signing_key import KeyRing
from tests.controller.test_runtime import FakeKube as FakeControllerKube
from tests.extender.conftest import add_gpu_node, bind_body, create_pod, pod, start_extender, wait_for
from tests.unit.test_signing_key import mount

PODS = "/api/v1/namespaces/default/pods"
K0, K2 = "legacy-key-0123456789", "second-key-0123456789"


def kid_of(kube: Any, name: str) -> str:
    return assignment.parse(kube.get(f"{PODS}/{name}")["metadata"]["annotations"][resources.ASSIGNMENT]).kid


def test_add_switch_retire_never_pauses_scheduling_nor_distrusts_a_running_pod(kube, tmp_path: Path) -> None:
    secret = tmp_path / "signing"
    secret.mkdir()
    mount(secret, {"key": K0}, 1)  # today's Secret: one entry `key`
    ext = start_extender(kube, key=KeyRing(secret), identity_wait_seconds=0)
    controller = Controller(ControllerSettings(leader_election=False), FakeControllerKube(), KeyRing(secret))  # type: ignore[arg-type]
    try:
        add_gpu_node(kube, "gpu-0", gpus=4)
        controller.on_gpunode("ADDED", kube.get("/apis/gpupool.io/v1alpha1/gpunodes/gpu-0"))

        def bind(name: str) -> None:
            p = create_pod(kube, pod(name, compute=20))
            assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
            controller.on_pod("ADDED", kube.get(f"{PODS}/{name}"))

        bind("before")
        assert kid_of(kube, "before") == ""  # the legacy key signs exactly as before key ids
        # 1. add a verification key (every component re-reads the mounted files)
        mount(secret, {"key": K0, "key.k2": K2}, 2)
        wait_for(lambda: ext.service.key.current().kids == ("default", "k2"), 10, "the extender to re-read")
        bind("added")
        # 2. switch the signing key; a component that has not re-read yet quarantines what k2 signs, only until
        #    it re-reads (here: the controller, refreshed by hand after the bind)
        controller_ring = controller.key
        assert isinstance(controller_ring, KeyRing)
        mount(secret, {"key": K0, "key.k2": K2, "signing-kid": "k2"}, 3)
        wait_for(lambda: ext.service.key.current().signing == "k2", 10, "the extender to switch")
        bind("switched")
        assert kid_of(kube, "switched") == "k2"
        assert controller_ring.refresh()
        controller.on_keys_changed()
        assert not controller.quarantined and not ext.service.problems and ext.service.ready
        # a restarted extender trusts every pod at once
        fresh = start_extender(kube, key=KeyRing(secret), identity_wait_seconds=0)
        try:
            assert fresh.service.ready and not fresh.service.problems
            assert fresh.service.ledger_snapshot() == ext.service.ledger_snapshot()
        finally:
            fresh.stop()
        # 3. retire the old key once no running pod's assignment needs it (`gpupool status` counts them per key)
        per_key = {n: assignment.key_id_of(assignment.parse(kube.get(f"{PODS}/{n}")["metadata"]["annotations"][
            resources.ASSIGNMENT]), controller_ring.current()) for n in ("before", "added", "switched")}  # fmt: skip
        assert per_key == {"before": "default", "added": "default", "switched": "k2"}
        for name in ("before", "added"):
            kube.delete(f"{PODS}/{name}")
            controller.on_pod("DELETED", {"metadata": {"uid": f"uid-default-{name}", "namespace": "default",
                                                       "name": name}})  # fmt: skip
        mount(secret, {"key.k2": K2, "signing-kid": "k2"}, 4)
        wait_for(lambda: ext.service.key.current().kids == ("k2",), 10, "the extender to retire the old key")
        bind("after")
        assert controller_ring.refresh()
        controller.on_keys_changed()
        assert not ext.service.problems and not controller.quarantined and ext.service.ready
        # retired too early anyway: the pod is quarantined (its slices stay held), scheduling goes on
        early = create_pod(kube, pod("early", compute=20))
        claim = (assignment.SliceRecord(0, "GPU-gpu-0-3", "gpu-0", 20, 1024, "gpu3-9"),)
        record = assignment.Assignment(early["metadata"]["uid"], "gpu-0", claim, "2026-01-01T00:00:00Z")
        text = record.signed(K0.encode()).to_annotation()
        kube.patch(f"{PODS}/early", {"metadata": {"annotations": {resources.ASSIGNMENT: text}},
                                     "spec": {"nodeName": "gpu-0"}})  # fmt: skip
        wait_for(lambda: early["metadata"]["uid"] in ext.service.problems, 10, "quarantine of a pod on a retired key")
        assert ext.service.ledger.holding(early["metadata"]["uid"]) is not None and ext.service.ready
        bind("still-scheduling")
    finally:
        ext.stop()


def test_a_key_retired_while_a_pod_still_runs_on_it_quarantines_that_pod_at_once(kube, tmp_path: Path) -> None:
    """A running pod may see no event for days: retiring the key of its assignment quarantines it when the
    components re-read the keys, not on its next event (a leaked key retired must stop being trusted). Its slices
    stay held; the pod signed by the kept key stays trusted; scheduling goes on."""
    secret = tmp_path / "signing"
    secret.mkdir()
    mount(secret, {"key": K0}, 1)
    ext = start_extender(kube, key=KeyRing(secret), identity_wait_seconds=0)
    ring = KeyRing(secret)
    controller = Controller(ControllerSettings(leader_election=False), FakeControllerKube(), ring)  # type: ignore[arg-type]
    try:
        add_gpu_node(kube, "gpu-0", gpus=4)
        controller.on_gpunode("ADDED", kube.get("/apis/gpupool.io/v1alpha1/gpunodes/gpu-0"))
        uids = {}
        for name in ("old", "new"):
            if name == "new":
                mount(secret, {"key": K0, "key.k2": K2, "signing-kid": "k2"}, 2)
                wait_for(lambda: ext.service.key.current().signing == "k2", 10, "the extender to switch")
            p = create_pod(kube, pod(name, compute=20))
            assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
            uids[name] = p["metadata"]["uid"]
        assert ring.refresh()
        controller.on_keys_changed()
        for name in ("old", "new"):
            controller.on_pod("ADDED", kube.get(f"{PODS}/{name}"))
        assert kid_of(kube, "old") == "" and kid_of(kube, "new") == "k2"
        assert not ext.service.problems and not controller.quarantined
        mount(secret, {"key.k2": K2, "signing-kid": "k2"}, 3)  # retired while "old" runs
        wait_for(lambda: uids["old"] in ext.service.problems, 10, "the extender to quarantine the pod at once")
        assert uids["new"] not in ext.service.problems
        assert ext.service.ledger.holding(uids["old"]) is not None and ext.service.ready
        assert ring.refresh()
        controller.on_keys_changed()
        assert sorted(controller.quarantined) == [uids["old"]]
        assert controller.ledger.holding(uids["old"]) is not None
        p = create_pod(kube, pod("still-scheduling", compute=20))
        assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    finally:
        ext.stop()
