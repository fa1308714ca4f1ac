"""The chart against a real API server (the e2e control plane): server-side validation of every rendered
manifest, the RBAC of each service account (applied for real, checked with `kubectl auth can-i`), the
webhooks' matchConditions and failurePolicy (applied for real, no controller behind them), and the real
kube-scheduler running with the KubeSchedulerConfiguration the chart renders, as the chart's service account.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from e2e import chart
from e2e.cluster import Cluster, free_port
from e2e.polling import wait_for
from tests.helm.test_render import VALUE_SETS

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def apply(cluster: Cluster, objs: list[dict[str, Any]], *args: str) -> Any:
    return cluster.kubectl("apply", *args, "-f", "-", input=yaml.safe_dump_all(objs), check=False)


def delete(cluster: Cluster, objs: list[dict[str, Any]]) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=yaml.safe_dump_all(objs),
                    check=False)  # fmt: skip


# ------------------------------------------------------------------------------------------ server-side dry-run


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_pass_server_side_validation(chart_cluster: Cluster, name: str) -> None:
    ns = "gpupool-system"
    chart_cluster.create_namespace(ns)
    objs = chart.render(VALUE_SETS[name], namespace=ns)
    r = apply(chart_cluster, objs, "--dry-run=server", "--validate=strict")
    assert r.returncode == 0, f"server-side validation of value set {name!r} failed:\n{r.stderr}"
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(objs), r.stdout  # one "... created (server dry run)" line per object
    assert all("(server dry run)" in ln for ln in lines)


# ------------------------------------------------------------------------------------------ a release applied


@dataclass
class Release:
    cluster: Cluster
    namespace: str
    fullname: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]

    def sa(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{component}"


@pytest.fixture(scope="module")
def release(chart_cluster: Cluster) -> Iterator[Release]:
    """The chart's RBAC (ServiceAccounts, roles, bindings) applied for real in a fresh namespace, with unique
    cluster-scoped names; removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    ns = f"helm-{suffix}"
    fullname = f"gp-{suffix}"
    values = {"fullnameOverride": fullname}
    chart_cluster.create_namespace(ns)
    objs = [o for o in chart.render(values, namespace=ns) if o["kind"] in RBAC_KINDS]
    r = apply(chart_cluster, objs, "--server-side")
    assert r.returncode == 0, r.stderr
    try:
        yield Release(chart_cluster, ns, fullname, values, objs)
    finally:
        delete(chart_cluster, objs)
        chart_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# (component, verb, resource, subresource, where, allowed); where: "" = cluster-wide/any namespace,
# "ns" = the release namespace, else a namespace name
CAN_I = [
    # controller: queues, gate removal, preemption through evictions, status, its Lease
    ("controller", "list", "pods", "", "", True),
    ("controller", "watch", "pods", "", "", True),
    ("controller", "patch", "pods", "", "", True),
    ("controller", "patch", "pods", "status", "", True),
    ("controller", "create", "pods", "eviction", "", True),
    ("controller", "list", "gpuqueues.gpupool.io", "", "", True),
    ("controller", "patch", "gpuqueues.gpupool.io", "status", "", True),
    ("controller", "patch", "gpunodes.gpupool.io", "status", "", True),
    ("controller", "list", "namespaces", "", "", True),
    ("controller", "list", "nodes", "", "", True),
    ("controller", "create", "events", "", "", True),
    ("controller", "create", "leases.coordination.k8s.io", "", "ns", True),
    ("controller", "update", "leases.coordination.k8s.io/{fullname}-controller", "", "ns", True),
    ("controller", "update", "leases.coordination.k8s.io/gpupool-scheduler", "", "ns", False),
    ("controller", "delete", "pods", "", "", False),
    ("controller", "create", "pods", "", "", False),
    ("controller", "create", "pods", "binding", "", False),
    ("controller", "delete", "nodes", "", "", False),
    ("controller", "patch", "nodes", "", "", False),
    ("controller", "delete", "gpuqueues.gpupool.io", "", "", False),
    ("controller", "get", "secrets", "", "", False),
    ("controller", "create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", "", "", False),
    # scheduler pod: stock kube-scheduler + the extender (bind writes the assignment, then the Binding)
    ("scheduler", "create", "pods", "binding", "", True),
    ("scheduler", "patch", "pods", "", "", True),
    ("scheduler", "list", "gpunodes.gpupool.io", "", "", True),
    ("scheduler", "watch", "gpunodes.gpupool.io", "", "", True),
    ("scheduler", "list", "nodes", "", "", True),
    ("scheduler", "create", "leases.coordination.k8s.io", "", "ns", True),
    ("scheduler", "update", "leases.coordination.k8s.io/gpupool-scheduler", "", "ns", True),
    ("scheduler", "update", "leases.coordination.k8s.io/{fullname}-controller", "", "ns", False),
    ("scheduler", "get", "configmaps/extension-apiserver-authentication", "", "kube-system", True),
    ("scheduler", "create", "tokenreviews.authentication.k8s.io", "", "", True),
    ("scheduler", "delete", "nodes", "", "", False),
    ("scheduler", "patch", "nodes", "", "", False),
    ("scheduler", "patch", "gpunodes.gpupool.io", "", "", False),
    ("scheduler", "patch", "gpunodes.gpupool.io", "status", "", False),
    ("scheduler", "list", "gpuqueues.gpupool.io", "", "", True),  # reserved nodes (spec.reserveNodes)
    ("scheduler", "watch", "gpuqueues.gpupool.io", "", "", True),
    ("scheduler", "patch", "gpuqueues.gpupool.io", "", "", False),
    ("scheduler", "get", "secrets", "", "", False),
    ("scheduler", "get", "secrets", "", "ns", False),
    # node agent: the pods of its node, its GPUNode, labels of its Node
    ("deviceplugin", "list", "pods", "", "", True),
    ("deviceplugin", "watch", "pods", "", "", True),
    ("deviceplugin", "patch", "pods", "", "", True),
    ("deviceplugin", "create", "gpunodes.gpupool.io", "", "", True),
    ("deviceplugin", "patch", "gpunodes.gpupool.io", "status", "", True),
    ("deviceplugin", "get", "nodes", "", "", True),
    ("deviceplugin", "patch", "nodes", "", "", True),
    ("deviceplugin", "delete", "pods", "", "", False),
    ("deviceplugin", "create", "pods", "", "", False),
    ("deviceplugin", "create", "pods", "binding", "", False),
    ("deviceplugin", "create", "pods", "eviction", "", False),
    ("deviceplugin", "delete", "nodes", "", "", False),
    ("deviceplugin", "delete", "gpunodes.gpupool.io", "", "", False),
    ("deviceplugin", "patch", "gpuqueues.gpupool.io", "status", "", False),
    ("deviceplugin", "list", "secrets", "", "", False),
]


def _can_i(rel: Release, component: str, verb: str, resource: str, sub: str, where: str) -> str:
    args = ["auth", "can-i", verb, resource.format(fullname=rel.fullname), f"--as={rel.sa(component)}"]
    if sub:
        args.append(f"--subresource={sub}")
    if where == "":
        args.append("--all-namespaces")
    else:
        args.append(f"--namespace={rel.namespace if where == 'ns' else where}")
    r = rel.cluster.kubectl(*args, check=False)
    answer = r.stdout.strip().split("\n")[-1] if r.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {r.stdout} {r.stderr}"
    return answer


def test_rbac_of_each_service_account(release: Release) -> None:
    wrong = []
    for component, verb, resource, sub, where, allowed in CAN_I:
        answer = _can_i(release, component, verb, resource, sub, where)
        if (answer == "yes") != allowed:
            what = f"{verb} {resource.format(fullname=release.fullname)}{'/' + sub if sub else ''}"
            wrong.append(
                f"{component}: {what} in {where or 'all namespaces'}: {answer}, want {'yes' if allowed else 'no'}"
            )
    assert not wrong, "RBAC differs from what each component needs:\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------------ webhooks


def _pod(name: str, limits: dict[str, str] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "c", "image": "busybox"}
    if limits:
        c["resources"] = {"limits": limits}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [c]}}


def test_webhooks_apply_only_to_gpupool_pods_and_fail_closed(release: Release) -> None:
    """The rendered webhook configurations, for real, with no controller behind their Service: pods that do not
    mention gpupool are created anyway (matchConditions); gpupool pods fail (failurePolicy Fail), aliases
    included; gpupool's own service accounts are not sent to the webhook."""
    c = release.cluster
    target = f"{release.namespace}-pods"
    c.create_namespace(target)
    values = {
        **release.values,
        "controller": {
            "webhook": {
                "timeoutSeconds": 3,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": target}},
            }
        },
    }
    hooks = [
        o
        for o in chart.render(values, namespace=release.namespace)
        if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ]
    assert len(hooks) == 2
    r = apply(c, hooks, "--server-side")
    assert r.returncode == 0, r.stderr
    try:
        gpu = {"gpupool.io/gpu": "1", "gpupool.io/gpu-compute": "30"}

        def create(pod: dict[str, Any], *extra: str) -> Any:
            return c.kubectl("create", "--dry-run=server", "-n", target, *extra, "-f", "-",
                             input=json.dumps(pod), check=False)  # fmt: skip

        # the webhook configuration takes a moment to reach the admission plugin
        wait_for(lambda: create(_pod("probe", gpu)).returncode != 0, timeout=20, what="webhooks active")
        plain = create(_pod("plain", {"cpu": "1"}))
        assert plain.returncode == 0, f"a pod that does not mention gpupool was blocked:\n{plain.stderr}"
        for name, limits in (("canonical", gpu), ("alias", {"pool.kubernetes.io/gpu": "1"})):
            r = create(_pod(name, limits))
            assert r.returncode != 0 and "mutate-pods.gpupool.io" in r.stderr, (name, r.stdout, r.stderr)
        annotated = _pod("annotated", {"cpu": "1"})
        annotated["metadata"]["annotations"] = {"gpupool.io/assignment": "{}"}
        r = create(annotated)
        assert r.returncode != 0 and "validate-pods.gpupool.io" in r.stderr, (r.stdout, r.stderr)
        # gpupool's own service accounts are never sent to the webhook
        own = create(annotated, f"--as={release.sa('scheduler')}", "--as-group=system:masters")
        assert own.returncode == 0, own.stderr
    finally:
        delete(c, hooks)
        c.kubectl("delete", "namespace", target, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------ kube-scheduler


def test_real_kube_scheduler_runs_with_the_rendered_config(release: Release) -> None:
    """kube-scheduler v1.36 starts with exactly the chart's KubeSchedulerConfiguration (leader election on the
    Lease gpupool-scheduler in the release namespace, the extender at a dummy loopback port), authenticated as
    the chart's scheduler service account with the chart's RBAC, and is healthy, leads, and hits no RBAC wall."""
    c = release.cluster
    if not c.local:
        pytest.skip("needs the local control plane (GPUPOOL_E2E_KUBECONFIG is set)")
    sa_kubeconfig = c.kubeconfig_for_serviceaccount(f"{release.fullname}-scheduler", release.namespace)
    cfg_text = chart.scheduler_config(
        f"http://127.0.0.1:{free_port()}",  # nothing listens: the config must still be accepted
        sa_kubeconfig,
        values=release.values,
        namespace=release.namespace,
        leader_elect=True,
    )
    cfg = yaml.safe_load(cfg_text)
    assert cfg["leaderElection"]["resourceNamespace"] == release.namespace
    path = c.run_dir / f"helm-sched-{release.fullname}.yaml"
    path.write_text(cfg_text)
    port = free_port()
    name = f"helm-kube-scheduler-{release.fullname}"
    proc = c.start_process(
        name,
        [
            c.binary("kube-scheduler"),
            f"--config={path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--authentication-kubeconfig={sa_kubeconfig}",
            f"--authorization-kubeconfig={sa_kubeconfig}",
            f"--cert-dir={c.run_dir / (name + '-certs')}",
            "--v=2",
        ],
        ready_url=f"https://127.0.0.1:{port}/healthz",
        ready_timeout=90,
    )
    try:

        def holder() -> str:
            r = c.kubectl("get", "lease", "gpupool-scheduler", "-n", release.namespace, "-o", "json", check=False)
            return str(json.loads(r.stdout)["spec"].get("holderIdentity") or "") if r.returncode == 0 else ""

        assert wait_for(holder, timeout=60, what="the gpupool-scheduler Lease")
        time.sleep(3)  # informers list everything they watch right after start
        assert proc.alive(), c.log_tails(40, [name])
        log = proc.log_path.read_text(errors="replace")
        forbidden = [ln for ln in log.splitlines() if "forbidden" in ln.lower()]
        assert not forbidden, "kube-scheduler hit RBAC denials:\n" + "\n".join(forbidden[:20])
        assert "invalid" not in log.lower() or "extender" not in log.lower(), log[-4000:]
    finally:
        c.stop_process(name)


def test_e2e_harness_runs_the_chart_config(chart_cluster: Cluster) -> None:
    """The path the e2e tier uses: Cluster.start_gpupool_scheduler(config_yaml=chart.scheduler_config(...))."""
    c = chart_cluster
    if not c.local:
        pytest.skip("needs the local control plane (GPUPOOL_E2E_KUBECONFIG is set)")
    url = f"http://127.0.0.1:{free_port()}"
    cfg = chart.scheduler_config(url, c.kubeconfig_for("scheduler"))
    name = f"helm-gpupool-scheduler-{uuid.uuid4().hex[:6]}"
    proc = c.start_gpupool_scheduler(url, config_yaml=cfg, name=name)
    try:
        assert proc.alive()
        text = (c.run_dir / f"{name}.yaml").read_text()
        ran = yaml.safe_load(text)
        ours = yaml.safe_load(cfg)
        assert ran["extenders"] == ours["extenders"] and ran["profiles"] == ours["profiles"]
    finally:
        c.stop_process(name)


def test_upgrade_keeps_the_generated_secrets(chart_cluster: Cluster) -> None:
    """The signing key and the webhook CA/certificate are generated once: a later render against the cluster
    (helm's `lookup`, as in `helm upgrade`) reuses what is stored, and the webhooks keep the stored CA."""
    c = chart_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, values = f"helm-up-{suffix}", {"fullnameOverride": f"gp-{suffix}"}
    c.create_namespace(ns)
    try:
        first = chart.render(values, namespace=ns)
        secrets = [o for o in first if o["kind"] == "Secret"]
        assert {s["metadata"]["name"] for s in secrets} == {f"gp-{suffix}-signing-key", f"gp-{suffix}-webhook-tls"}
        r = apply(c, secrets)
        assert r.returncode == 0, r.stderr
        again = chart.render(values, namespace=ns, extra_args=["--dry-run=server", f"--kubeconfig={c.kubeconfig}"])
        fresh = chart.render(values, namespace=ns)  # no lookup: new random material
        by_name = {o["metadata"]["name"]: o for o in again if o["kind"] == "Secret"}
        for s in secrets:
            assert by_name[s["metadata"]["name"]]["data"] == s["data"], s["metadata"]["name"]
        assert {o["metadata"]["name"]: o.get("data") for o in fresh if o["kind"] == "Secret"} != {
            s["metadata"]["name"]: s["data"] for s in secrets
        }
        ca = next(s for s in secrets if s["metadata"]["name"].endswith("webhook-tls"))["data"]["ca.crt"]
        for o in again:
            if o["kind"].endswith("WebhookConfiguration"):
                assert all(w["clientConfig"]["caBundle"] == ca for w in o["webhooks"])
    finally:
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_render_that_sees_the_cluster_generates_the_signing_key(chart_cluster: Cluster) -> None:
    """Issue 12 #6: the refusal of offline renders leaves `helm install` (lookup sees the cluster) working with
    the defaults; `--dry-run=server` is such a render."""
    c = chart_cluster
    suffix = uuid.uuid4().hex[:6]
    ns = f"helm-key-{suffix}"
    c.create_namespace(ns)
    try:
        kc = f"--kubeconfig={c.kubeconfig}"
        objs = chart.render({}, namespace=ns, offline_key=False, extra_args=["--dry-run=server", kc])
        assert [o["metadata"]["name"] for o in objs if o["kind"] == "Secret" and "signing" in o["metadata"]["name"]]
    finally:
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_install_upgrade_uninstall(chart_cluster: Cluster) -> None:
    """`helm install --wait` with fake inventory (as on kind) against the control plane (kwok runs the pods),
    `helm upgrade` keeps the generated secrets, `helm uninstall` keeps only the signing key."""
    c = chart_cluster
    suffix = uuid.uuid4().hex[:6]
    rel, ns = f"gpupool-{suffix}", f"helm-inst-{suffix}"
    kc = f"--kubeconfig={c.kubeconfig}"
    # keep the real webhooks away from every other namespace of the shared control plane
    scope = f"controller.webhook.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={ns}-none"
    common = [
        "--namespace",
        ns,
        kc,
        "--set",
        "fakeInventory.enabled=true",
        "--set",
        scope,
        "--wait",
        "--timeout",
        "180s",
    ]

    def secret(name: str, key: str) -> str:
        r = c.kubectl("get", "secret", "-n", ns, name, "-o", "json")
        return str(json.loads(r.stdout)["data"][key])

    try:
        chart.helm("install", rel, str(chart.CHART_DIR), "--create-namespace", *common, timeout=240)
        deployments = json.loads(c.kubectl("get", "deployments", "-n", ns, "-o", "json").stdout)["items"]
        assert {d["metadata"]["name"] for d in deployments} == {f"{rel}-controller", f"{rel}-scheduler"}
        assert all(d["status"].get("availableReplicas") == d["spec"]["replicas"] for d in deployments)
        key, ca = secret(f"{rel}-signing-key", "key"), secret(f"{rel}-webhook-tls", "ca.crt")
        chart.helm("upgrade", rel, str(chart.CHART_DIR), *common, "--set", "enforcement.backend=mps", timeout=240)
        assert secret(f"{rel}-signing-key", "key") == key
        assert secret(f"{rel}-webhook-tls", "ca.crt") == ca
        hook = json.loads(c.kubectl("get", "mutatingwebhookconfiguration", f"{rel}-mutating", "-o", "json").stdout)
        assert hook["webhooks"][0]["clientConfig"]["caBundle"] == ca
        out = chart.helm("uninstall", rel, "--namespace", ns, kc, "--wait", timeout=240)
        assert f"{rel}-signing-key" in out.stdout  # "These resources were kept due to the resource policy"
        left = json.loads(c.kubectl("get", "secrets", "-n", ns, "-o", "json").stdout)["items"]
        assert [s["metadata"]["name"] for s in left] == [f"{rel}-signing-key"]
    finally:
        if _release_exists(rel, ns, kc):
            chart.helm("uninstall", rel, "--namespace", ns, kc, timeout=240)
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _release_exists(rel: str, ns: str, kc: str) -> bool:
    try:
        out = chart.helm("list", "--namespace", ns, kc, "-q")
    except chart.ChartError:
        return False
    return rel in out.stdout.split()
