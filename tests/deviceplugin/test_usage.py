"""GPUNode status.usage: per-pod usage from the pool runtime, rate-limited onto the heartbeat."""

from __future__ import annotations

from typing import Any, cast

from deviceplugin.gpunode import MAX_USAGE_PODS, UsageReporter, UsageSample

MIB = 1 << 20
S = 1_000_000_000


def pods(usage: dict[str, object] | None) -> list[dict[str, Any]]:
    assert usage is not None
    return cast(list[dict[str, Any]], usage["pods"])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_usage_is_per_pod_rate_limited_and_sent_only_when_it_changed() -> None:
    samples: list[UsageSample] = [
        ("ns", "a", 3 * MIB + 1, 4 * MIB, 2 * S),  # container 0 of pod a
        ("ns", "a", MIB, 2 * MIB, 1 * S),  # another container (or device) of pod a
        ("ns", "b", 0, 8 * MIB, 0),
    ]
    clock = Clock()
    reporter = UsageReporter(lambda: list(samples), interval_s=60, clock=clock)
    first = reporter.report()
    assert first is not None and "windowSeconds" not in first
    assert first["pods"] == [
        {"namespace": "ns", "name": "a", "memoryUsedMiB": 5, "memoryLimitMiB": 6},
        {"namespace": "ns", "name": "b", "memoryUsedMiB": 0, "memoryLimitMiB": 8},
    ]
    clock.now += 59
    assert reporter.report() is None  # not due: the heartbeat carries no usage
    clock.now += 1
    samples[0] = ("ns", "a", 3 * MIB + 1, 4 * MIB, 2 * S + 30 * S)  # 30 s of device time in 60 s
    second = reporter.report()
    assert second is not None and second["windowSeconds"] == 60
    assert pods(second)[0]["computePercent"] == 50
    assert pods(second)[1]["computePercent"] == 0
    clock.now += 60
    samples[0] = ("ns", "a", 3 * MIB + 1, 4 * MIB, 2 * S + 60 * S)  # the same 50 %: nothing changed
    assert reporter.report() is None
    clock.now += 60
    del samples[2]  # pod b left
    third = reporter.report()
    assert [p["name"] for p in pods(third)] == ["a"]


def test_usage_is_bounded() -> None:
    many: list[UsageSample] = [("ns", f"p{i:04d}", 0, MIB, 0) for i in range(MAX_USAGE_PODS + 3)]
    usage = UsageReporter(lambda: many, interval_s=0, clock=Clock()).report()
    assert usage is not None and usage["truncated"] is True
    assert len(pods(usage)) == MAX_USAGE_PODS


def test_a_report_that_was_not_written_is_sent_again() -> None:
    clock = Clock()
    reporter = UsageReporter(lambda: [("ns", "a", MIB, MIB, 0)], interval_s=60, clock=clock)
    assert reporter.report() is not None
    reporter.unsent()  # the status patch failed
    clock.now += 60
    assert reporter.report() is not None  # unchanged, yet sent
