"""Issue 12: no input surface answers with an uncaught exception or a 500, and every refusal names a field.

Surfaces: pod manifests (parsing and admission), the extender's wire bodies, assignment annotations,
GPUNode objects (model and extender cache), the simulator's CSV rows. `make fuzz` runs the same longer.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import admission
from gpupool import assignment, objects, resources
from gpupool.errors import AssignmentError, GpupoolError, InvalidRequest
from gpupool.simulator import trace
from tests.fuzz.strategies import (
    FUZZ,
    KEY,
    assignment_texts,
    csv_cells,
    gpunodes,
    json_values,
    maybe,
    pods,
)

LIMITS = admission.PoolLimits(largest_gpu_mib=16384, largest_node_gpus=2, total_gpus=4, models=frozenset({"A100"}))
USERS = st.sampled_from([None, {"username": "alice"},
                         {"username": "system:serviceaccount:gpupool-system:gpupool-controller"}])  # fmt: skip


def _named(errors: list[Any]) -> None:
    assert errors, "a refusal without a reason"
    for e in errors:
        assert isinstance(e.field, str) and e.field.strip(), f"refusal without a field: {e}"
        assert e.message.strip(), f"refusal without a message: {e}"


@FUZZ
@given(pods)
def test_parse_pod_returns_a_request_or_named_errors(pod: Any) -> None:
    try:
        resources.parse_pod(pod)
    except InvalidRequest as exc:
        _named(exc.errors)


@FUZZ
@given(pods, maybe(pods), st.sampled_from(["CREATE", "UPDATE"]), USERS, st.booleans())
def test_admission_never_raises_and_names_every_field(pod: Any, old: Any, op: str, user: Any, known: bool) -> None:
    mutated = admission.mutate(pod, node_selector={"pool": "a"})
    assert isinstance(mutated, dict)
    limits = LIMITS if known else admission.PoolLimits()
    for candidate in (pod, mutated):
        errors = admission.validate(candidate, old=old if isinstance(old, dict) else None, operation=op,
                                    userinfo=user, limits=limits)  # fmt: skip
        if errors:
            _named(errors)
            assert admission.rejection_message(errors).startswith("gpupool: ")


@FUZZ
@given(assignment_texts())
def test_reading_an_assignment_raises_only_assignment_error(text: Any) -> None:
    try:
        record = assignment.verify(text, KEY)
    except AssignmentError as exc:
        assert str(exc).strip()
    else:
        assert record.sig and record.slices


@FUZZ
@given(st.lists(gpunodes, min_size=1, max_size=4))
def test_gpunodes_are_read_or_refused_by_name_and_never_overfill(objs: list[Any]) -> None:
    from tests.extender.conftest import node
    from tests.extender.hostile import service

    for obj in objs:
        try:
            objects.node_info_from_gpunode(obj)
        except GpupoolError as exc:
            assert "GPUNode" in str(exc)
    s = service()
    s.on_node_list([node("n0"), node("n1")])
    s.on_gpunode_list([o for o in objs if isinstance(o, dict)][:1])
    for obj in objs:
        if isinstance(obj, dict):
            s.on_gpunode_event("MODIFIED", obj)
    for name in s.ledger.node_names():
        for g in s.ledger.gpus_of(name):
            assert g.used_memory <= g.memory_mib and g.used_compute <= 100


# --- the extender's HTTP verbs ---------------------------------------------------------------------

_CLIENT: list[Any] = []


def _client() -> Any:
    """One app for every example (a TestClient per example would dominate the run)."""
    if not _CLIENT:
        from fastapi.testclient import TestClient

        from extender.app import create_app
        from tests.extender.conftest import gpunode, node
        from tests.extender.hostile import service

        s = service()
        s.on_node_list([node("n0"), node("n1")])
        s.on_gpunode_list([gpunode("n0", gpus=2), gpunode("n1", gpus=1, memory=8192)])
        s.on_pod_list([])
        client = TestClient(create_app(s))
        client.__enter__()
        _CLIENT.append(client)
    return _CLIENT[0]


names = maybe(st.lists(maybe(st.sampled_from(["n0", "n1", "nope", ""])), max_size=3))
wire_bodies = st.one_of(
    st.tuples(st.sampled_from(["filter", "prioritize"]), st.fixed_dictionaries(
        {"Pod": maybe(pods)}, optional={"NodeNames": names, "Nodes": maybe(st.fixed_dictionaries(
            {"items": maybe(st.lists(json_values | st.fixed_dictionaries({"metadata": maybe(
                st.fixed_dictionaries({"name": maybe(st.just("n0"))}))}), max_size=3))}))})),
    st.tuples(st.just("preempt"), st.fixed_dictionaries(
        {"Pod": maybe(pods)}, optional={
            "NodeNameToMetaVictims": maybe(st.dictionaries(st.sampled_from(["n0", "n1", "x"]), maybe(
                st.fixed_dictionaries({"Pods": maybe(st.lists(maybe(st.fixed_dictionaries(
                    {"UID": maybe(st.sampled_from(["u-1", "v"]))})), max_size=2)),
                    "NumPDBViolations": maybe(st.integers(-5, 5))})), max_size=2)),
            "NodeNameToVictims": maybe(st.dictionaries(st.sampled_from(["n0", "x"]), maybe(st.fixed_dictionaries(
                {"Pods": maybe(st.lists(maybe(pods), max_size=2))})), max_size=2)),
        })),
    st.tuples(st.just("bind"), st.fixed_dictionaries(
        {"PodName": maybe(st.just("p")), "PodNamespace": maybe(st.just("team-a")),
         "PodUID": maybe(st.just("u-1")), "Node": maybe(st.sampled_from(["n0", "n1", "x"]))})),
    st.tuples(st.sampled_from(["filter", "prioritize", "preempt", "bind"]), json_values),
)  # fmt: skip


@FUZZ
@given(wire_bodies)
def test_extender_verbs_never_answer_500(case: tuple[str, Any]) -> None:
    verb, body = case
    content = json.dumps(body).encode()  # NaN and Infinity too: Python's JSON writes them, so may a client
    r = _client().post(f"/{verb}", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), (r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["Error"].strip()


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Any:
    yield
    if _CLIENT:
        _CLIENT.pop().__exit__(None, None, None)


# --- the simulator's trace files -------------------------------------------------------------------


def _csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@FUZZ
@given(st.lists(st.lists(csv_cells, min_size=5, max_size=5), max_size=4),
       st.lists(st.lists(csv_cells, min_size=6, max_size=6), max_size=4), st.booleans())  # fmt: skip
def test_trace_rows_load_or_fail_naming_line_and_field(nodes: list[list[str]], pods_: list[list[str]],
                                                       short: bool) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        node_file, pod_file = Path(tmp) / "nodes.csv", Path(tmp) / "pods.csv"
        node_file.write_text(_csv(list(trace.NODE_COLUMNS), nodes))
        pod_rows = [r[:-1] if short else r for r in pods_]
        pod_file.write_text(_csv(list(trace.POD_COLUMNS), pod_rows))
        loaded = None
        try:
            loaded = trace.load_nodes(node_file)
        except trace.TraceError as exc:
            assert exc.message.strip() and (exc.line is None or exc.line >= 1)
            assert exc.line is None or exc.line == 1 or exc.field or "values" in exc.message
        try:
            trace.load_pods(pod_file, loaded)
        except trace.TraceError as exc:
            assert exc.message.strip() and (exc.line is None or exc.line >= 1)
            assert exc.line is None or exc.line == 1 or exc.field or "values" in exc.message
