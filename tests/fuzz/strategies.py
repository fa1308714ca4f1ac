"""Hypothesis strategies for every input surface: pod manifests, wire bodies, assignments, GPUNodes, trace rows.

Each strategy draws mostly the right shape with, at every level, a chance of any JSON value in its place,
so both the validation (wrong types) and the logic behind it (well-typed but hostile values) are reached.
`EXAMPLES` is small for `make test`; `make fuzz` raises it through `GPUPOOL_FUZZ_EXAMPLES`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gpupool import resources
from gpupool.assignment import Assignment, SliceRecord

EXAMPLES = int(os.environ.get("GPUPOOL_FUZZ_EXAMPLES", "40"))
#: the short run is derandomized (same examples every time, so `make test` is reproducible); the long one explores
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="GPUPOOL_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)

KEY = b"fuzz-signing-key"

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `strategy`, sometimes any JSON value (a wrong type) instead."""
    return st.one_of(strategy, strategy, strategy, json_values)


quantities = st.one_of(
    st.integers(-(2**70), 2**70),
    st.from_regex(r"[+-]?[0-9]{0,40}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,8})?(m|k|M|G|Ki|Mi|Gi|Ei)?", fullmatch=True),
    st.sampled_from(["1e999999", "1e1000000", "1e-999999", "8Ei", "9223372036854775808", "30", "4096", "1", "0"]),
    st.text(max_size=10),
    st.floats(),
)
RESOURCE_NAMES = (*resources.CANONICAL, *resources.ALIASES, "cpu", "nvidia.com/gpu")
ANNOTATION_KEYS = (*resources.USER_ANNOTATIONS, *resources.SYSTEM_ANNOTATIONS, resources.RESIZE, "gpupool.io/other",
                   "team")  # fmt: skip
ENV_NAMES = (*resources.RUNTIME_ENV, "GPUPOOL_SLICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_HOME", "HOME", "")
annotation_values = st.one_of(
    st.sampled_from(["local", "pool", "guaranteed", "best-effort", "fgd", "bestfit", "team-a", "A100", "", ",",
                     '{"seq":1,"container":"a","compute":50}', '{"history":[{"seq":1,"state":"Applied"}]}']),
    st.text(max_size=16),
)
resource_maps = st.dictionaries(st.sampled_from(RESOURCE_NAMES), quantities, max_size=3)
containers = st.fixed_dictionaries(
    {"name": maybe(st.text(max_size=6)), "resources": maybe(st.fixed_dictionaries(
        {}, optional={"limits": maybe(resource_maps), "requests": maybe(resource_maps)}))},
    optional={
        "env": maybe(st.lists(maybe(st.fixed_dictionaries(
            {"name": maybe(st.sampled_from(ENV_NAMES) | st.text(max_size=6)), "value": st.text(max_size=4)})),
            max_size=3)),
        "envFrom": maybe(st.lists(maybe(st.fixed_dictionaries(
            {}, optional={"prefix": maybe(st.sampled_from(["", "CUDA_", "APP_", "C", "GPUPOOL_X"]))})), max_size=2)),
        "securityContext": maybe(st.fixed_dictionaries({"privileged": maybe(st.booleans())})),
    },
)  # fmt: skip
pods = st.fixed_dictionaries(
    {
        "metadata": maybe(st.fixed_dictionaries(
            {"name": maybe(st.sampled_from(["p", "q"])), "namespace": maybe(st.just("team-a")),
             "uid": maybe(st.sampled_from(["u-1", "u-2"]))},
            optional={"annotations": maybe(st.dictionaries(
                st.sampled_from(ANNOTATION_KEYS) | st.text(max_size=8), maybe(annotation_values), max_size=3))},
        )),
        "spec": maybe(st.fixed_dictionaries(
            {"containers": maybe(st.lists(maybe(containers), max_size=3))},
            optional={
                "initContainers": maybe(st.lists(maybe(containers), max_size=2)),
                "priority": maybe(st.integers(-(2**40), 2**40)),
                "nodeName": maybe(st.sampled_from(["", "n0", "n1"])),
                "schedulingGates": maybe(st.lists(maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(
                    [resources.ADMISSION_GATE, "other"]))})), max_size=2)),
            },
        )),
    },
    optional={"status": maybe(st.fixed_dictionaries({"phase": maybe(st.sampled_from(["Pending", "Running"]))}))},
)  # fmt: skip


def _signed_text(uid: str = "u-1") -> str:
    record = Assignment(uid, "n0", (SliceRecord(0, "GPU-n0-0", "n0", 30, 1024, "gpu0-0"),), "2026-12-01T00:00:00Z")
    return record.signed(KEY).to_annotation()


@st.composite
def assignment_texts(draw: st.DrawFn) -> Any:
    """Annotation values: valid, edited field by field, any JSON, any text, or not a string at all."""
    base: dict[str, Any] = json.loads(_signed_text())
    kind = draw(st.sampled_from(["edit", "edit-slice", "json", "text", "deep", "raw"]))
    if kind == "edit":
        base[draw(st.sampled_from(["v", "pod", "node", "slices", "at", "sig", "extra"]))] = draw(json_values)
        return json.dumps(base)
    if kind == "edit-slice":
        base["slices"][0][draw(st.sampled_from(["c", "gpu", "node", "compute", "memory", "slot", "init"]))] = draw(
            json_values
        )
        return json.dumps(base)
    if kind == "json":
        return json.dumps(draw(json_values))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        return "[" * depth + "]" * depth
    if kind == "raw":
        return draw(json_values)
    return draw(st.text(max_size=64))


gpu_entries = st.fixed_dictionaries(
    {"uuid": maybe(st.sampled_from(["GPU-a", "GPU-b", "GPU-c"])), "index": maybe(st.integers(-2, 3)),
     "memoryMiB": maybe(st.integers(-10, 2**66) | st.sampled_from([8192, 16384])),
     "model": maybe(st.sampled_from(["A100", ""]))},
    optional={"numa": maybe(st.integers(-1, 2)), "health": maybe(st.sampled_from(["Healthy", "Unhealthy", "?"]))},
)  # fmt: skip
gpunodes = st.fixed_dictionaries(
    {"metadata": maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(["n0", "n1"]))})),
     "status": maybe(st.fixed_dictionaries({"gpus": maybe(st.lists(maybe(gpu_entries), max_size=3))},
                                           optional={"agentEndpoint": maybe(st.sampled_from(["", "10.0.0.1:9403"]))}))},
    optional={"spec": maybe(st.fixed_dictionaries({"disabledGPUs": maybe(st.lists(maybe(
        st.sampled_from(["GPU-a", "GPU-b"])), max_size=2))}))},
)  # fmt: skip

csv_cells = st.one_of(
    st.sampled_from(["", "0", "1", "8", "1000", "500", "-1", "64", "65", "A100", "V100|A100", "x", "1e3", "1" * 5000]),
    st.text(max_size=8),
)
