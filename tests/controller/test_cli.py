"""The `gpupool` command (controller.cli): its subcommands, and `explain` over the controller's own state."""

from __future__ import annotations

from typing import Any

from controller import status
from controller.cli import build_parser, explain_lines
from tests.controller.test_runtime import bound, gpunode, make, pod, queue, run


def test_one_command_offers_simulate_and_the_cluster_commands() -> None:
    parser = build_parser()
    for argv in (["simulate", "--policy", "bestfit"], ["status", "--json"], ["explain", "team-a/x"]):
        assert callable(parser.parse_args(argv).run)


def test_explain_shows_quota_position_fit_and_binding() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 100))
    c.on_pod("ADDED", bound("run", "n1", 0))
    c.on_pod("ADDED", pod("wait"))
    c.manager.schedule()
    lines = explain_lines(c, "team-a", "wait")
    assert lines[0].startswith("pod team-a/wait (uid uid-wait, priority 0)")
    assert "queue: team-a; quota in use 100/100 compute, 40960/- MiB" in lines
    assert "waiting: 1 of 1 in line" in lines
    assert "fits now on 1 of 1 node(s): n1" in lines
    assert "bound to node n1:" in explain_lines(c, "team-a", "run")
    assert explain_lines(c, "team-a", "nope")[0].endswith("or does not exist")


def test_status_shapes_are_the_ones_the_controller_writes() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 200))
    c.on_pod("ADDED", bound("run", "n1", 0))
    c.on_pod("ADDED", pod("wait"))
    c.manager.schedule()
    assert c.queue_statuses() == status.queue_statuses(c.manager)
    assert c.node_statuses() == status.node_statuses(c.ledger)
    node = status.node_statuses(c.ledger)["n1"]
    assert node["computePercent"] == 50 and [g["slices"] for g in node["allocated"]] == [1, 0]
    assert [g["reservedCompute"] for g in node["allocated"]] == [0, 100]
    assert status.queue_statuses(c.manager)["team-a"] == {
        "pending": 0, "admitted": 2, "usage": {"compute": 200, "memoryMiB": 2 * 40960},
        "borrowed": {"compute": 0, "memoryMiB": 0}, "computeSummary": "200/200", "memorySummary": f"{2 * 40960}/-",
        "sharePercent": 100, "fairSharePercent": 100,
    }  # fmt: skip


def _with_conditions(p: dict[str, Any], kube: Any) -> dict[str, Any]:
    """The pod as the API server holds it after the controller's condition patches (the watch's view)."""
    key = f"{p['metadata']['namespace']}/{p['metadata']['name']}"
    conditions = {c[2]["type"]: c[2] for c in kube.of("condition") if c[1] == key}
    return {**p, "status": {**p["status"], "conditions": list(conditions.values())}}


def _explain_from_the_api(monkeypatch: Any, listed: dict[str, list[dict[str, Any]]], target: str) -> list[str]:
    """`gpupool explain` end to end over a fake API server that lists `listed`."""
    import argparse

    import controller.kube
    from controller import cli

    class Lister:
        def __init__(self, _client: object) -> None:
            pass

        async def list_namespaces(self) -> list[dict[str, Any]]:
            return [{"metadata": {"name": "team-a"}}]

        async def list_nodes(self) -> list[dict[str, Any]]:
            return []

        async def list_custom(self, plural: str) -> list[dict[str, Any]]:
            return listed.get(plural, [])

        async def list_pods(self) -> list[dict[str, Any]]:
            return listed["pods"]

    monkeypatch.setattr(controller.kube, "Kube", Lister)
    monkeypatch.setattr(controller.kube, "load_api_client", lambda _path: None)
    args = argparse.Namespace(kubeconfig=None, signing_key_file="/nonexistent", pod=target)
    state = cli.load_state(args)
    namespace, name = target.split("/")
    return explain_lines(state, namespace, name)


def test_explain_shows_the_controllers_decision_and_never_admits_a_gated_pod(monkeypatch: Any) -> None:
    """Issue 11 finding 6: explain ran a fresh schedule() and printed "admitted" for a pod still gated
    (here: the pod holding the GPU finished after the controller's cycle, before its next one)."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 1000))
    running = bound("run", "n1", 0)
    c.on_pod("ADDED", running)
    waiting = pod("wait")
    c.on_pod("ADDED", waiting)
    run(c.cycle(now=2e9))
    event = next(e[3] for e in kube.of("event") if e[1] == "team-a/wait" and e[2] == "GPUPoolWaiting")
    published = _with_conditions(waiting, kube)
    c.on_pod("MODIFIED", published)
    c.on_pod("DELETED", running)  # the GPU is free now; the controller has not run again
    # what `gpupool explain team-a/wait` reads from the API server now
    listed = {"pods": [published], "gpunodes": [gpunode("n1", gpus=1)], "gpuqueues": [queue("team-a", 1000)]}
    lines = _explain_from_the_api(monkeypatch, listed, "team-a/wait")
    assert "admission gate: present (not admitted yet)" in lines
    assert f"controller decision: not admitted (Waiting since 2033-05-18T03:33:20Z): {event}" in lines
    assert not any(line.startswith("admitted") for line in lines)
    assert lines[-1] == ("what-if (a simulated admission pass now, not the controller's decision): "
                         "would be admitted (capacity on node n1)")  # fmt: skip
    assert lines == explain_lines(c, "team-a", "wait")  # the CLI's rebuild equals the controller's state
    # once the controller admits it, explain says so, with the controller's own words
    c2, kube2 = make()
    c2.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c2.on_queue("ADDED", queue("team-a", 1000))
    c2.on_pod("ADDED", waiting)
    run(c2.cycle(now=2e9))
    admitted = _with_conditions(waiting, kube2)
    admitted["spec"] = {**admitted["spec"], "schedulingGates": []}
    c2.on_pod("MODIFIED", admitted)
    lines = explain_lines(c2, "team-a", "wait")
    assert "admission gate: removed (admitted)" in lines
    assert ("controller decision: admitted (Admitted since 2033-05-18T03:33:20Z): admitted by queue team-a; "
            "capacity reserved on node n1; the gpupool scheduler binds it") in lines  # fmt: skip


def test_explain_shows_the_quota_a_waiting_pod_lacks() -> None:
    """A waiting pod is charged nothing: explain checked quota with that zero charge and never said quota."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 100))
    c.on_pod("ADDED", bound("run", "n1", 0))
    c.on_pod("ADDED", pod("wait"))
    lines = explain_lines(c, "team-a", "wait")
    assert "quota: quota 100/100 compute in use, needs 100 more" in lines


def test_status_prints_weight_share_and_fair_share(monkeypatch: Any, capsys: Any) -> None:
    import argparse

    from controller import cli

    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    for name, weight in (("team-a", 1), ("team-b", 3)):
        c.on_queue("ADDED", queue(name, 0, cohort="c", fairSharing={"weight": weight}))
    c.on_queue("ADDED", queue("lender", 400, cohort="c"))
    for i in range(4):
        c.on_pod("ADDED", pod(f"a{i}"))
        c.on_pod("ADDED", pod(f"b{i}", ns="team-b"))
    c.manager.schedule()
    monkeypatch.setattr(cli, "load_state", lambda args: c)
    monkeypatch.setenv("COLUMNS", "250")
    assert cli.run_status(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "fair share %" in out
    rows = {line.split("│")[1].strip(): [f.strip() for f in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│ team-")}  # fmt: skip
    # weights 1:3 over 4 GPUs: one for team-a, three for team-b; fair shares the same
    assert rows["team-a"][-3:] == ["1", "25", "25"] and rows["team-b"][-3:] == ["3", "75", "75"], out
