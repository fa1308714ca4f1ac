"""The `gpupool` command (controller.cli): its subcommands, and `explain` over the controller's own state."""

from __future__ import annotations

from controller import status
from controller.cli import build_parser, explain_lines
from tests.controller.test_runtime import bound, gpunode, make, pod, queue


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
    assert explain_lines(c, "team-a", "run")[1] == "bound to node n1:"
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
    }  # fmt: skip
