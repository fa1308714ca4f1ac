"""Issue 11: a quarantined pod (untrusted assignment) is an Event, a metric and a status line, its claim
counted; the controller's /readyz follows its sync state; new verification keys are picked up."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

from controller import metrics, probes
from controller.runtime import QUARANTINE_EVENT_REASON, Controller
from controller.settings import ControllerSettings
from gpupool import assignment, resources
from gpupool.assignment import KeySet
from tests.controller.test_runtime import KEY, FakeKube, bound, gpunode, make, run

OTHER = b"rotated-key-0123456789"


class Keys:
    """A `KeySource` whose keys the test switches (what `KeyRing.refresh` does after the Secret changed)."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    def current(self) -> KeySet:
        return self.keys


def signed_with(name: str, node: str, gpu: int, keys: KeySet) -> dict[str, Any]:
    p = bound(name, node, gpu)
    record = assignment.parse(p["metadata"]["annotations"][resources.ASSIGNMENT])
    p["metadata"]["annotations"][resources.ASSIGNMENT] = record.signed(keys).to_annotation()
    return p


def test_untrusted_pod_is_quarantined_with_one_event_a_metric_and_its_claim_held() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("good", "n1", 0))
    evil = signed_with("evil", "n1", 1, KeySet.of({"k9": OTHER}, "k9"))  # a key id this cluster does not know
    c.on_pod("ADDED", evil)
    assert "key id 'k9'" in c.quarantined["uid-evil"]
    assert metrics.QUARANTINED._value.get() == 1
    held = c.ledger.holding("uid-evil")  # its claim counts: nothing else is admitted onto GPU 1
    assert held is not None and held.slices[0].gpu == "GPU-n1-1"
    run(c.cycle(now=2e9))
    events = [e for e in kube.calls if e[0] == "event" and e[2] == QUARANTINE_EVENT_REASON]
    assert [e[1] for e in events] == ["team-a/evil"] and "k9" in events[0][3]
    kube.calls.clear()
    c.on_pod("MODIFIED", evil)
    run(c.cycle(now=2e9 + 1))
    assert not [e for e in kube.calls if e[0] == "event" and e[2] == QUARANTINE_EVENT_REASON]  # once per reason
    assert c.readiness()["ready"] and c.readiness()["quarantined"] == {"team-a/evil": c.quarantined["uid-evil"]}
    c.on_pod("DELETED", evil)
    assert not c.quarantined and metrics.QUARANTINED._value.get() == 0


def test_a_new_verification_key_lifts_the_quarantine() -> None:
    keys = Keys(KeySet.single(KEY))
    c = Controller(ControllerSettings(leader_election=False), FakeKube(), keys)  # type: ignore[arg-type]
    c.ready = True
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", signed_with("early", "n1", 0, KeySet.of({"k2": OTHER}, "k2")))  # signed before we know k2
    assert "uid-early" in c.quarantined
    keys.keys = KeySet.of({assignment.LEGACY_KID: KEY, "k2": OTHER}, "k2")
    c.on_keys_changed()
    assert not c.quarantined and c.manager.pods["uid-early"].assigned is not None


class ListingKube(FakeKube):
    """Lists that wait for the test: readiness must stay false until every list completed."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    async def list_namespaces(self) -> list[dict[str, Any]]:
        return []

    async def list_nodes(self) -> list[dict[str, Any]]:
        return []

    async def list_custom(self, plural: str) -> list[dict[str, Any]]:
        return []

    async def list_pods(self) -> list[dict[str, Any]]:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return []


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_is_503_until_pods_gpunodes_and_gpuqueues_are_listed() -> None:
    gate = threading.Event()
    state: dict[str, Controller] = {}
    c = Controller(ControllerSettings(leader_election=False), ListingKube(gate), KEY)  # type: ignore[arg-type]
    server = probes.serve("127.0.0.1", 0, metrics.REGISTRY, lambda: state["c"].readiness() if state else None)
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert get(url + "/readyz")[0] == 503  # not even built
        state["c"] = c
        done = threading.Thread(target=lambda: asyncio.run(c.rebuild()))
        done.start()
        code, body = get(url + "/readyz")
        assert code == 503 and body["synced"]["pods"] is False
        gate.set()
        done.join(10)
        code, body = get(url + "/readyz")
        assert code == 200 and all(body["synced"].values()), body
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            assert b"gpupool_controller_ready 1.0" in r.read()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()


def test_status_counts_pods_per_key_id_and_lists_the_quarantined(capsys: Any, monkeypatch: Any) -> None:
    from controller import cli

    rotated = KeySet.of({assignment.LEGACY_KID: KEY, "k2": OTHER}, "k2")
    c = Controller(ControllerSettings(leader_election=False), FakeKube(), rotated)  # type: ignore[arg-type]
    c.ready = True
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_pod("ADDED", bound("old", "n1", 0))  # no kid: verified by `default`
    c.on_pod("ADDED", signed_with("new", "n1", 1, rotated))
    c.on_pod("ADDED", signed_with("lost", "n1", 2, KeySet.of({"k1": b"retired-key-0123"}, "k1")))
    assert cli.pods_per_key(c) == {"default": 1, "k2": 1, "none": 1}
    monkeypatch.setattr(cli, "load_state", lambda args: c)
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width
    cli.run_status(cli.build_parser().parse_args(["status"]))
    out = capsys.readouterr().out
    assert "assignments per signing key id: default 1, k2 1, none 1" in out
    assert "quarantined pod team-a/lost" in out and "key id 'k1'" in out
