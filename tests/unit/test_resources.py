"""Parsing a pod manifest into a request: names, aliases, defaults, and every bad input."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool import resources
from gpupool.errors import InvalidRequest
from gpupool.request import Locality, QoS


def pod(limits: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
        requests: dict[str, Any] | None = None, init: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "resources": {"limits": limits or {}}}]}
    if requests is not None:
        spec["containers"][0]["resources"]["requests"] = requests
    if init is not None:
        spec["initContainers"] = [{"name": "setup", "resources": {"limits": init}}]
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "annotations": annotations or {}},
            "spec": spec}


def errors_of(manifest: dict[str, Any]) -> str:
    with pytest.raises(InvalidRequest) as info:
        resources.parse_pod(manifest)
    return str(info.value)


def test_full_request_parses_into_integer_units() -> None:
    req = resources.parse_pod(pod({resources.GPU: 2, resources.GPU_COMPUTE: "30", resources.GPU_MEMORY: "4096"},
                                  {resources.LOCALITY: "pool", resources.QOS: "best-effort",
                                   resources.GPU_MODEL: "A100-80GB, H100-80GB", resources.POLICY: "spread",
                                   resources.QUEUE: "team-a"}))
    (c,) = req.containers
    assert (c.count, c.compute, c.memory_mib, c.init) == (2, 30, 4096, False)
    assert req.locality is Locality.POOL and req.qos is QoS.BEST_EFFORT
    assert req.models == frozenset({"A100-80GB", "H100-80GB"})
    assert (req.policy, req.queue, req.uid, req.key) == ("spread", "team-a", "u-1", "ns/p")
    assert req.compute_units == 60


def test_defaults_whole_gpu_and_whole_memory() -> None:
    (c,) = resources.parse_pod(pod({resources.GPU: "1"})).containers
    assert (c.compute, c.memory_mib) == (100, None)
    assert c.whole_gpu


def test_compute_alone_implies_one_slice() -> None:
    (c,) = resources.parse_pod(pod({resources.GPU_COMPUTE: 25})).containers
    assert (c.count, c.compute) == (1, 25)


def test_requests_only_and_init_containers_are_parsed() -> None:
    req = resources.parse_pod(pod(requests={resources.GPU: 1, resources.GPU_COMPUTE: 10},
                                  init={resources.GPU: 1, resources.GPU_COMPUTE: 5, resources.GPU_MEMORY: 100}))
    init, main = req.containers
    assert (init.init, init.index, init.compute, init.memory_mib) == (True, 0, 5, 100)
    assert (main.init, main.compute) == (False, 10)


def test_pod_without_gpupool_resources_has_no_containers() -> None:
    req = resources.parse_pod(pod({"cpu": "1"}))
    assert req.containers == ()
    assert not resources.mentions_gpupool(pod({"cpu": "1"}))


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ({resources.GPU_COMPUTE: 0}, "1..100"),
        ({resources.GPU_COMPUTE: 101}, "1..100"),
        ({resources.GPU_COMPUTE: "abc"}, "is not a quantity"),
        ({resources.GPU_COMPUTE: "0.5"}, "whole number"),
        ({resources.GPU_COMPUTE: "500m"}, "whole number"),
        ({resources.GPU_COMPUTE: "-5"}, "must not be negative"),
        ({resources.GPU_MEMORY: 0}, "at least 1"),
        ({resources.GPU: 0, resources.GPU_COMPUTE: 10}, "at least 1 slice"),
        ({resources.GPU: True}, "whole number"),
    ],
)
def test_bad_quantities_name_the_field(limits: dict[str, Any], needle: str) -> None:
    message = errors_of(pod(limits))
    assert needle in message
    assert "spec.containers[0].resources" in message


def test_request_and_limit_must_agree() -> None:
    message = errors_of(pod({resources.GPU: 1}, requests={resources.GPU: 2}))
    assert "must be equal" in message


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({resources.LOCALITY: "anywhere"}, "'local' or 'pool'"),
        ({resources.QOS: "gold"}, "'guaranteed' or 'best-effort'"),
        ({resources.POLICY: "magic"}, "unknown policy"),
        ({resources.COMPUTE_MODE: "Share"}, "'ceiling' or 'share'"),
        ({resources.QUEUE: "Team_A"}, "not a queue name"),
        ({resources.GPU_MODEL: " , "}, "empty model list"),
        ({resources.GPU_UUID: ""}, "empty UUID list"),
        ({"gpupool.io/colour": "red"}, "unknown gpupool annotation"),
    ],
)
def test_bad_annotations_name_the_key(annotations: dict[str, str], needle: str) -> None:
    message = errors_of(pod({resources.GPU: 1}, annotations))
    assert needle in message
    assert f"metadata.annotations[{next(iter(annotations))}]" in message


def test_system_annotations_only_from_gpupool() -> None:
    manifest = pod({resources.GPU: 1}, {resources.ASSIGNMENT: "{}"})
    resources.parse_pod(manifest)  # gpupool's own components read them
    with pytest.raises(InvalidRequest, match="written by gpupool only"):
        resources.parse_pod(manifest, allow_system_annotations=False)


def test_all_errors_are_reported_together() -> None:
    with pytest.raises(InvalidRequest) as info:
        resources.parse_pod(pod({resources.GPU_COMPUTE: 0, resources.GPU_MEMORY: 0}, {resources.QOS: "x"}))
    assert len(info.value.errors) == 3


def test_alias_left_in_place_fails_loudly() -> None:
    manifest = pod({"pool.kubernetes.io/gpu": 1})
    assert resources.mentions_gpupool(manifest)
    assert "admission webhook bypassed" in errors_of(manifest)
    assert resources.alias_names_in(manifest) == ["spec.containers[0].resources.limits[pool.kubernetes.io/gpu]"]


def test_alias_rewrite_patch() -> None:
    manifest = pod({"pool.kubernetes.io/gpu": 1, "pool.kubernetes.io/gpu-compute": 20, "cpu": "1"})
    ops = resources.rewrite_aliases(manifest)
    assert ops == [{"op": "replace", "path": "/spec/containers/0/resources/limits",
                    "value": {resources.GPU: 1, resources.GPU_COMPUTE: 20, "cpu": "1"}}]


@pytest.mark.parametrize(
    ("text", "value"), [("4", 4), ("4k", 4000), ("1Ki", 1024), ("2000m", 2), (7, 7), ("1e3", 1000)]
)
def test_quantities(text: str | int, value: int) -> None:
    assert resources.parse_quantity(text, "f") == value


def test_policy_annotation_takes_the_registry_names() -> None:
    from gpupool import policies

    for name in policies.available():
        assert resources.parse_pod(pod({resources.GPU: "1"}, annotations={resources.POLICY: name})).policy == name


@pytest.mark.parametrize("value", ["1e999999", "1e1000000", "1e-999999", "9223372036854775808", "8Ei",
                                   "1" * 40, "1" * 200, 10**30, 1e300])
def test_huge_quantities_are_refused_by_their_size_before_conversion(value: Any) -> None:
    """Issue 12 #2: "1e999999" built a 3.3-million-bit integer (25 s holding the GIL); "1e1000000"
    raised decimal.Overflow. Digit and exponent counts are bounded before any conversion."""
    text = errors_of(pod({resources.GPU_MEMORY: value}))
    assert "spec.containers[0].resources.limits[gpupool.io/gpu-memory]" in text
    assert "out of range" in text or "characters" in text


def test_the_largest_quantity_still_parses() -> None:
    assert resources.parse_quantity("9223372036854775807", "f") == resources.MAX_QUANTITY
    assert resources.parse_quantity("1Ei", "f") == 2**60
    assert resources.parse_quantity("0.5e1", "f") == 5
    assert resources.parse_quantity(" 30 ", "f") == 30
