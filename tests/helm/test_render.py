"""The chart renders what the contract says: lint, templates for several value sets, structure of each manifest.

Needs only the helm binary (no cluster). Server-side validation is in test_cluster.py.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import chart
from e2e.cluster import K8S_VERSION, REPO_ROOT

CHART = chart.CHART_DIR
NS = "gpupool-system"

#: value sets rendered, linted and (test_cluster.py) validated by the API server
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "kind-fake-inventory": {"fakeInventory": {"enabled": True}},
    "backend-mps": {"enforcement": {"backend": "mps", "mps": {"shmDir": "/dev/shm"}}},
    "backend-hami-core": {"enforcement": {"backend": "hami-core"}},
    "backend-pool": {"enforcement": {"backend": "pool", "pool": {"computeMode": "share"}}},
    "backend-mps-unmanaged": {"enforcement": {"backend": "mps", "mps": {"managed": False}}},
    "backend-none-cdi": {"enforcement": {"backend": "none", "cdi": True}},
    "metrics-servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
        "scheduler": {"extender": {"metricsPort": 9401}},
    },
    "everything-else": {
        "image": {"digest": "sha256:" + "a" * 64},
        "placement": {"defaultPolicy": "binpack", "policies": ["binpack", "spread", "fgd"]},
        "slotsPerGPU": 64,
        "remoteSlots": 8,
        "overcommit": {"computePercent": 150, "memoryPercent": 120},
        "defaultQueue": {"create": True, "nominalQuota": {"compute": 400, "memoryMiB": 65536}},
        "controller": {"replicas": 1, "requireQueue": True},
        "scheduler": {"replicas": 1, "image": {"tag": "v1.36.3"}, "extender": {"metricsPort": 0}},
        "devicePlugin": {"runtimeClassName": "nvidia", "agentEndpoint": {"address": "hostIP", "port": 9500}},
        "gpuNodes": {"nodeSelector": {"gpu": "true"}},
        "signingKey": {"existingSecret": "my-signing-key"},
        "metrics": {"enabled": False, "dashboard": {"enabled": False}},
        "apiPriority": {"enabled": False},
    },
}


@pytest.fixture(scope="module")
def rendered(helm_bin: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: chart.render(values, namespace=NS) for name, values in VALUE_SETS.items()}


def one(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = chart.find(objs, kind, component=component)
    assert len(found) == 1, f"expected one {kind} ({component}), found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for c in obj["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# ------------------------------------------------------------------------------------------ no binaries


def test_chart_crds_are_byte_identical_to_repo_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "no CRDs in crds/"
    assert sorted(packaged) == sorted(repo), "charts/gpupool/crds must hold exactly the files of crds/"
    for name, data in repo.items():
        assert packaged[name] == data, (
            f"charts/gpupool/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/gpupool/crds/"
        )


def test_dashboard_is_valid_json_and_uses_gpupool_metrics() -> None:
    dash = json.loads((CHART / "dashboards" / "gpupool.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    names = set(re.findall(r"\b(gpupool_[a-z0-9_]+)", " ".join(exprs)))
    assert names and all(n.startswith("gpupool_") for n in names)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("per gpu", "queue", "latency"):
        assert topic in titles


def _metric_names_in_code() -> set[str]:
    """Every `gpupool_*` name a component registers (string literals in the Python sources)."""
    names: set[str] = set()
    for pkg in ("extender", "controller", "deviceplugin", "gpupool"):
        for py in (REPO_ROOT / pkg).rglob("*.py"):
            names.update(re.findall(r"[\"'](gpupool_[a-z0-9_]+)[\"']", py.read_text(errors="replace")))
    return names


def test_dashboard_metric_names_exist_in_the_components() -> None:
    """Every metric of the dashboard is registered by a component (suffixes _bucket/_sum/_count/_total of
    histograms and counters stripped; prometheus_client adds _total itself)."""
    dash = json.loads((CHART / "dashboards" / "gpupool.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    exprs += " " + " ".join(v.get("definition", "") for v in dash["templating"]["list"])
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\b(gpupool_[a-z0-9_]+)", exprs)}
    known = _metric_names_in_code()
    known |= {n + "_total" for n in known}
    missing = sorted(n for n in used if n not in known)
    assert not missing, f"dashboard metrics that no component registers: {missing}"


# ------------------------------------------------------------------------------------------ helm


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(helm_bin: Path, name: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    out = chart.helm(
        "lint", "--strict", str(CHART), "--kube-version", K8S_VERSION, "--namespace", NS, "--values", str(values)
    )
    assert "0 chart(s) failed" in out.stdout


def test_bad_values_fail_with_a_clear_message(helm_bin: Path) -> None:
    """values.schema.json (and the chart's own checks) refuse typos and out-of-range values."""
    for values, message in (
        (
            {"enforcement": {"backend": "cuda"}},
            r"/enforcement/backend.*one of 'auto', 'pool', 'mps', 'hami-core', 'none'",
        ),
        ({"slotsPerGPU": 0}, r"/slotsPerGPU.*minimum"),
        ({"overcommit": {"computePercent": 50}}, r"/overcommit/computePercent.*minimum"),
        ({"fakeInventory": {"enable": True}}, r"additional properties 'enable' not allowed"),
        ({"placement": {"defaultPolicy": "tetris"}}, r"/placement/defaultPolicy"),
        ({"scheduler": {"clientConnection": {"qps": 0, "burst": 400}}}, r"/scheduler/clientConnection/qps"),
        ({"scheduler": {"clientConnection": {"qps": 200, "burst": 0}}}, r"/scheduler/clientConnection/burst"),
    ):
        with pytest.raises(chart.ChartError, match=message):
            chart.render(values)


def test_schema_policy_names_match_the_contract() -> None:
    from gpupool.pool import live_policies

    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["placement"]["properties"]["defaultPolicy"]["enum"]
    assert sorted(enum) == sorted(live_policies())  # clustering is offered only by the simulator


def test_pool_settings_are_set_once_for_the_extender_and_the_controller(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """One values block (placement, slotsPerGPU, remoteSlots, overcommit) rendered into both Deployments."""
    pool_env = {"GPUPOOL_DEFAULT_POLICY", "GPUPOOL_POLICIES", "GPUPOOL_SLOTS_PER_GPU", "GPUPOOL_REMOTE_SLOTS",
                "GPUPOOL_OVERCOMMIT_COMPUTE_PERCENT", "GPUPOOL_OVERCOMMIT_MEMORY_PERCENT", "GPUPOOL_X"}  # fmt: skip
    del rendered  # the helm binary is ready
    values = {**VALUE_SETS["everything-else"], "placement": {
        "defaultPolicy": "binpack", "policies": ["binpack", "fgd"], "extraEnv": {"GPUPOOL_X": "1"}}}  # fmt: skip
    objs = chart.render(values, namespace=NS)
    ext = container(one(objs, "Deployment", "scheduler"), "extender")
    ctl = container(one(objs, "Deployment", "controller"), "controller")
    for c in (ext, ctl):
        names = [e["name"] for e in c["env"]]
        assert len(names) == len(set(names)), names  # each variable once
    e, c = env(ext), env(ctl)
    assert {k: v for k, v in e.items() if k in pool_env} == {k: v for k, v in c.items() if k in pool_env}
    assert json.loads(c["GPUPOOL_POLICIES"]) == ["binpack", "fgd"] and c["GPUPOOL_X"] == "1"
    assert c["GPUPOOL_SLOTS_PER_GPU"] == "64" and c["GPUPOOL_OVERCOMMIT_COMPUTE_PERCENT"] == "150"


def test_every_value_is_documented() -> None:
    """Each key of values.yaml appears in the chart README."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []

    def walk(v: Any, path: str) -> None:
        if not isinstance(v, dict) or path.endswith(
            ("affinity", "resources", "nodeSelector", "Selector", "updateStrategy", "podSecurityContext")
        ):
            return
        for k, x in v.items():
            p = f"{path}.{k}" if path else k
            if k not in readme:
                missing.append(p)
            walk(x, p)

    walk(values, "")
    assert not missing, f"values not documented in charts/gpupool/README.md: {missing}"


def test_every_set_renders_the_components(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, objs in rendered.items():
        kinds = {o["kind"] for o in objs}
        assert {
            "Deployment",
            "DaemonSet",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ConfigMap",
            "ClusterRole",
            "ServiceAccount",
            "Service",
            "Secret",
        } <= kinds, name
        for o in objs:
            if o["kind"] not in (
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration",
                "GPUQueue",
                "FlowSchema",
            ):
                assert o["metadata"].get("namespace") in (NS, "kube-system"), (name, o["kind"], o["metadata"])


def test_scheduler_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cfg = chart.scheduler_config_from(rendered["defaults"])
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert cfg["profiles"][0]["schedulerName"] == "gpupool-scheduler"
    assert cfg["leaderElection"] == {
        "leaderElect": True,
        "resourceLock": "leases",
        "resourceName": "gpupool-scheduler",
        "resourceNamespace": NS,
    }
    (ext,) = cfg["extenders"]
    assert ext["urlPrefix"] == "http://127.0.0.1:8888"
    assert (ext["filterVerb"], ext["prioritizeVerb"], ext["preemptVerb"], ext["bindVerb"]) == (
        "filter",
        "prioritize",
        "preempt",
        "bind",
    )
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is False
    assert ext["weight"] == 1 and ext["httpTimeout"] == "5s"
    assert ext["managedResources"] == [
        {"name": n, "ignoredByScheduler": True}
        for n in ("gpupool.io/gpu", "gpupool.io/gpu-compute", "gpupool.io/gpu-memory")
    ]
    # the same extender stanza as the e2e template (urlPrefix aside)
    tmpl = yaml.safe_load((REPO_ROOT / "e2e" / "templates" / "sched-gpupool.yaml").read_text())
    (t_ext,) = tmpl["extenders"]
    assert {k: v for k, v in ext.items() if k != "urlPrefix"} == {k: v for k, v in t_ext.items() if k != "urlPrefix"}
    assert tmpl["profiles"] == cfg["profiles"]
    # kube-scheduler's client rate: not its default 50 / 100 (a bind burst it makes itself takes 18 s per 1,000)
    assert cfg["clientConnection"] == {"qps": 200, "burst": 400}
    assert {k: v for k, v in tmpl["clientConnection"].items() if k != "kubeconfig"} == cfg["clientConnection"]


def test_scheduler_client_rate_is_a_value(helm_bin: Path) -> None:
    cfg = chart.scheduler_config_from(chart.render({"scheduler": {"clientConnection": {"qps": 12.5, "burst": 30}}}))
    assert cfg["clientConnection"] == {"qps": 12.5, "burst": 30}


def test_scheduler_config_helper_for_e2e(helm_bin: Path) -> None:
    text = chart.scheduler_config("http://127.0.0.1:45678", "/tmp/sched.kubeconfig")
    cfg = yaml.safe_load(text)
    assert cfg["extenders"][0]["urlPrefix"] == "http://127.0.0.1:45678"
    assert cfg["clientConnection"]["kubeconfig"] == "/tmp/sched.kubeconfig"
    assert cfg["leaderElection"]["leaderElect"] is False
    assert cfg["leaderElection"]["resourceName"] == "gpupool-scheduler"
    assert cfg["extenders"][0]["managedResources"][0]["name"] == "gpupool.io/gpu"


def test_scheduler_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dep = one(rendered["defaults"], "Deployment", "scheduler")
    spec = dep["spec"]["template"]["spec"]
    ks = container(dep, "kube-scheduler")
    assert ks["image"] == f"registry.k8s.io/kube-scheduler:{K8S_VERSION}"  # from .Capabilities.KubeVersion
    assert "--config=/etc/kubernetes/gpupool-scheduler/config.yaml" in ks["command"]
    ext = container(dep, "extender")
    assert ext["command"] == ["gpupool-extender"]
    e = env(ext)
    assert e["GPUPOOL_HOST"] == "127.0.0.1" and e["GPUPOOL_PORT"] == "8888"
    assert e["GPUPOOL_SIGNING_KEY_FILE"] == "/etc/gpupool/signing"  # the Secret's directory: every key by id
    assert e["GPUPOOL_SLOTS_PER_GPU"] == "32" and e["GPUPOOL_REMOTE_SLOTS"] == "16"
    assert e["GPUPOOL_DEFAULT_POLICY"] == "fgd"
    assert {"mountPath": "/etc/gpupool/signing", "name": "signing-key", "readOnly": True} in ext["volumeMounts"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] == "gpupool-scheduler"
    # vendor suffixes of the cluster version are stripped from the default tag
    objs = chart.render({}, kube_version="v1.31.4-gke.1000")
    assert container(one(objs, "Deployment", "scheduler"), "kube-scheduler")["image"].endswith(":v1.31.4")
    other = one(rendered["everything-else"], "Deployment", "scheduler")
    e2 = env(container(other, "extender"))
    assert json.loads(e2["GPUPOOL_POLICIES"]) == ["binpack", "spread", "fgd"]
    assert e2["GPUPOOL_OVERCOMMIT_COMPUTE_PERCENT"] == "150" and e2["GPUPOOL_SLOTS_PER_GPU"] == "64"
    assert "GPUPOOL_METRICS_PORT" not in e2
    assert container(other, "extender")["image"] == "ghcr.io/gpupool/gpupool@sha256:" + "a" * 64


def test_webhooks(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["defaults"]
    secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "gpupool-webhook-tls")
    ca = secret["data"]["ca.crt"]
    assert base64.b64decode(ca).startswith(b"-----BEGIN CERTIFICATE-----")
    from controller import webhooks as controller_webhooks

    templates = {t["kind"]: t for t in controller_webhooks.load_templates()}
    for kind, path, ops in (
        ("MutatingWebhookConfiguration", "/mutate-pods", ["CREATE"]),
        ("ValidatingWebhookConfiguration", "/validate-pods", ["CREATE", "UPDATE"]),
    ):
        (wh,) = one(objs, kind)["webhooks"]
        # the same webhook as the controller's own template (controller/webhooks/), except where it is served
        # and one more match condition that keeps gpupool's service accounts off the webhook
        (tw,) = templates[kind]["webhooks"]
        assert path.lstrip("/") in (controller_webhooks.MUTATE_PATH, controller_webhooks.VALIDATE_PATH)
        for key in sorted(set(tw) | set(wh)):
            if key in ("clientConfig", "matchConditions"):
                continue
            assert wh.get(key) == tw.get(key), (kind, key)
        mine = {c["name"]: c["expression"] for c in wh["matchConditions"]}
        for cond in tw["matchConditions"]:
            assert " ".join(mine[cond["name"]].split()) == " ".join(cond["expression"].split()), (kind, cond["name"])
        assert wh["failurePolicy"] == "Fail"
        assert wh["sideEffects"] == "None"
        assert wh["clientConfig"]["caBundle"] == ca  # one CA everywhere
        assert wh["clientConfig"]["service"] == {"name": "gpupool-webhook", "namespace": NS, "path": path, "port": 443}
        assert wh["rules"][0]["operations"] == ops and wh["rules"][0]["resources"] == ["pods"]
        conds = {c["name"]: c["expression"] for c in wh["matchConditions"]}
        assert "gpupool.io/" in conds["mentions-gpupool"] and "pool.kubernetes.io/" in conds["mentions-gpupool"]
        assert f"system:serviceaccount:{NS}:gpupool-scheduler" in conds["not-gpupool-itself"]
        # e2e/stack.py renders the same condition from controller.webhooks for its own service accounts
        users = json.loads(conds["not-gpupool-itself"].split(" in ", 1)[1].rstrip(")"))
        (rendered_hook,) = next(d for d in controller_webhooks.render_webhook_configurations(
            "https://x", "Y2E=", system_users=users) if d["kind"] == kind)["webhooks"]  # fmt: skip
        theirs = {c["name"]: c["expression"] for c in rendered_hook["matchConditions"]}
        assert theirs["not-gpupool-itself"].replace(" ", "") == conds["not-gpupool-itself"].replace(" ", "")
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "gpupool-webhook")
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"
    ctl = one(objs, "Deployment", "controller")
    c = container(ctl, "controller")
    assert c["command"] == ["gpupool-controller"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["webhook"] == 9443
    e = env(c)
    assert e["GPUPOOL_WEBHOOK_CERT_FILE"] == "/etc/gpupool/webhook/tls.crt"
    assert e["GPUPOOL_LEASE_NAMESPACE"] == NS and e["GPUPOOL_LEASE_NAME"] == "gpupool-controller"
    assert json.loads(e["GPUPOOL_SYSTEM_USERNAMES"]) == [
        f"system:serviceaccount:{NS}:gpupool-{x}" for x in ("controller", "scheduler", "deviceplugin")
    ]


def test_signing_key_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    s = next(
        o for o in rendered["defaults"] if o["kind"] == "Secret" and o["metadata"]["name"] == "gpupool-signing-key"
    )
    assert s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(s["data"]["key"])) >= 32
    assert not [o for o in rendered["everything-else"] if o["kind"] == "Secret" and "signing" in o["metadata"]["name"]]
    dp = one(rendered["everything-else"], "DaemonSet", "deviceplugin")
    vols = {v["name"]: v for v in dp["spec"]["template"]["spec"]["volumes"]}
    assert vols["signing-key"]["secret"]["secretName"] == "my-signing-key"
    # every entry of the Secret is mounted (no `items`, no subPath), so keys added for a rotation arrive
    assert "items" not in vols["signing-key"]["secret"]
    for kind, name, cname in (("Deployment", "controller", "controller"), ("Deployment", "scheduler", "extender"),
                              ("DaemonSet", "deviceplugin", "deviceplugin")):  # fmt: skip
        c = container(one(rendered["defaults"], kind, name), cname)
        assert env(c)["GPUPOOL_SIGNING_KEY_FILE"] == "/etc/gpupool/signing", name
        assert not [m for m in c["volumeMounts"] if m["name"] == "signing-key" and m.get("subPath")], name


def test_controller_readiness_is_its_sync_state(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Issue 11: /readyz on the metrics port (200 once its lists completed), not a TCP check."""
    c = container(one(rendered["defaults"], "Deployment", "controller"), "controller")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "tcpSocket" not in c["readinessProbe"]


def test_offline_render_refuses_to_mint_a_signing_key(helm_bin: Path) -> None:
    """Issue 12 #6: `helm template` and GitOps renders (no `lookup`) minted a new key on every render."""
    with pytest.raises(chart.ChartError, match=r"signingKey.*cannot see the cluster.*signingKey\.existingSecret"):
        chart.render({}, offline_key=False)
    objs = chart.render({"signingKey": {"existingSecret": "managed-key"}}, offline_key=False)
    assert not [o for o in objs if o["kind"] == "Secret" and "signing" in o["metadata"]["name"]]
    ds = one(objs, "DaemonSet", "deviceplugin")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["signing-key"]["secret"]["secretName"] == "managed-key"
    keys = [
        next(o for o in chart.render({"signingKey": {"generateWithoutCluster": True}}, offline_key=False)
             if o["kind"] == "Secret" and o["metadata"]["name"] == "gpupool-signing-key")["data"]["key"]
        for _ in range(2)
    ]  # fmt: skip
    assert keys[0] != keys[1]  # what the option accepts: a new key per render


def test_device_plugin_daemonset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ds = one(rendered["defaults"], "DaemonSet", "deviceplugin")
    spec = ds["spec"]["template"]["spec"]
    c = container(ds, "deviceplugin")
    e = env(c)
    assert e["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert e["NVIDIA_VISIBLE_DEVICES"] == "all" and e["GPUPOOL_BACKEND"] == "mps"  # real GPU nodes: auto = mps
    assert e["GPUPOOL_PLUGIN_DIR"] == "/var/lib/kubelet/device-plugins/"
    assert "GPUPOOL_FAKE_INVENTORY" not in e
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["device-plugins"]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    assert spec["securityContext"]["runAsUser"] == 0  # kubelet socket directory is root-owned
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert not c["securityContext"].get("privileged")
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert any(t["matchExpressions"][0]["key"] == "nvidia.com/gpu.present" for t in terms)
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])

    kind = rendered["kind-fake-inventory"]
    ds = one(kind, "DaemonSet", "deviceplugin")
    spec = ds["spec"]["template"]["spec"]
    e = env(container(ds, "deviceplugin"))
    assert e["GPUPOOL_FAKE_INVENTORY"] == "/etc/gpupool/inventory/inventory.yaml"
    assert "NVIDIA_VISIBLE_DEVICES" not in e
    assert spec["nodeSelector"] == {"gpupool.io/fake-gpu-node": "true"} and "affinity" not in spec
    cm = next(o for o in kind if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-inventory"))
    inv = yaml.safe_load(cm["data"]["inventory.yaml"])
    assert sum(g.get("count", 1) for g in inv) == 4 and all("memoryMiB" in g for g in inv)

    other = one(rendered["everything-else"], "DaemonSet", "deviceplugin")
    assert other["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert other["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "true"}


def test_device_plugin_publishes_its_agent_endpoint(rendered: dict[str, list[dict[str, Any]]], helm_bin: Path) -> None:
    """Every node agent publishes GPUNode status.agentEndpoint: without it no remote slice can be served."""
    from deviceplugin.settings import DevicePluginSettings

    def agent(objs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        c = container(one(objs, "DaemonSet", "deviceplugin"), "deviceplugin")
        return c["env"], {p["name"]: p for p in c["ports"]}

    for name, ip, field, port in (("defaults", "POD_IP", "status.podIP", 9403),
                                  ("everything-else", "HOST_IP", "status.hostIP", 9500)):  # fmt: skip
        items, ports = agent(rendered[name])
        names = [e["name"] for e in items]
        e = env({"env": items})
        assert e[ip] == {"fieldRef": {"fieldPath": field}}
        assert e["GPUPOOL_AGENT_ENDPOINT"] == f"$({ip}):{port}"
        assert names.index(ip) < names.index("GPUPOOL_AGENT_ENDPOINT")  # the kubelet expands only earlier vars
        assert ports["agent"]["containerPort"] == port
        assert ports["agent"].get("hostPort") == (port if ip == "HOST_IP" else None)
        # what the agent makes of it once the kubelet has expanded $(...)
        expanded = e["GPUPOOL_AGENT_ENDPOINT"].replace(f"$({ip})", "10.1.2.3")
        settings = DevicePluginSettings(node_name="n1", agent_endpoint=expanded)
        assert settings.agent_endpoint == f"10.1.2.3:{port}"

    override = chart.render({"devicePlugin": {"agentEndpoint": {"override": "{node}.gpu.example:7000"}}}, namespace=NS)
    items, ports = agent(override)
    assert env({"env": items})["GPUPOOL_AGENT_ENDPOINT"] == "{node}.gpu.example:7000" and "agent" not in ports
    off = chart.render({"devicePlugin": {"agentEndpoint": {"enabled": False}}}, namespace=NS)
    items, ports = agent(off)
    assert "GPUPOOL_AGENT_ENDPOINT" not in env({"env": items}) and "agent" not in ports


@pytest.mark.parametrize(
    ("name", "want", "absent"),
    [
        (
            "backend-mps",
            {
                "GPUPOOL_BACKEND": "mps",
                "GPUPOOL_MPS_MANAGED": "true",
                "GPUPOOL_MPS_CONTROL": "nvidia-cuda-mps-control",
                "GPUPOOL_MPS_PIPE_DIR": "/run/nvidia/mps",
                "GPUPOOL_MPS_LOG_DIR": "/var/log/gpupool-mps",
                "GPUPOOL_MPS_SHM_DIR": "/dev/shm",
                "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            },
            ["GPUPOOL_HAMI_LIB_DIR", "GPUPOOL_RUNTIME_LIB_DIR"],
        ),
        (
            "backend-mps-unmanaged",
            {"GPUPOOL_BACKEND": "mps", "GPUPOOL_MPS_MANAGED": "false", "NVIDIA_DRIVER_CAPABILITIES": "utility"},
            ["GPUPOOL_MPS_CONTROL", "GPUPOOL_MPS_LOG_DIR"],
        ),
        (
            "backend-pool",
            {
                "GPUPOOL_BACKEND": "pool",
                "GPUPOOL_RUNTIME_LIB_DIR": "/usr/local/gpupool",
                "GPUPOOL_RUNTIME_STATE_DIR": "/var/lib/gpupool/runtime",
                "GPUPOOL_RUNTIME_COMPUTE_MODE": "share",
            },
            ["GPUPOOL_MPS_PIPE_DIR", "GPUPOOL_HAMI_LIB_DIR"],
        ),
        # the default on real GPU nodes (README "What is enforced, per backend"), and with the fake inventory
        ("defaults", {"GPUPOOL_BACKEND": "mps", "GPUPOOL_MPS_MANAGED": "true"}, ["GPUPOOL_RUNTIME_LIB_DIR"]),
        ("kind-fake-inventory", {"GPUPOOL_BACKEND": "none"}, ["GPUPOOL_MPS_PIPE_DIR", "GPUPOOL_MPS_MANAGED"]),
        (
            "backend-hami-core",
            {
                "GPUPOOL_BACKEND": "hami-core",
                "GPUPOOL_HAMI_LIB_DIR": "/usr/local/vgpu",
                "GPUPOOL_HAMI_PRELOAD_FILE": "/usr/local/vgpu/ld.so.preload",
            },
            ["GPUPOOL_MPS_PIPE_DIR"],
        ),
        (
            "backend-none-cdi",
            {"GPUPOOL_BACKEND": "none", "GPUPOOL_CDI": "true"},
            ["GPUPOOL_MPS_PIPE_DIR", "GPUPOOL_HAMI_LIB_DIR"],
        ),
    ],
)
def test_backends(
    rendered: dict[str, list[dict[str, Any]]], name: str, want: dict[str, str], absent: list[str]
) -> None:
    e = env(container(one(rendered[name], "DaemonSet", "deviceplugin"), "deviceplugin"))
    for k, v in want.items():
        assert e[k] == v
    for k in absent:
        assert k not in e


@pytest.mark.parametrize(
    ("name", "host_paths"),
    [
        ("defaults", {"mps-pipes": "/run/nvidia/mps", "mps-logs": "/var/log/gpupool-mps"}),
        ("backend-mps", {"mps-pipes": "/run/nvidia/mps", "mps-logs": "/var/log/gpupool-mps", "mps-shm": "/dev/shm"}),
        ("backend-mps-unmanaged", {}),
        ("backend-pool", {"runtime-lib": "/usr/local/gpupool", "runtime-state": "/var/lib/gpupool/runtime"}),
        ("kind-fake-inventory", {}),
    ],
)
def test_backend_host_directories_are_mounted_at_their_host_path(
    rendered: dict[str, list[dict[str, Any]]], name: str, host_paths: dict[str, str]
) -> None:
    """The agent names host paths in Allocate's mounts (and runs the MPS daemons on them): same path inside."""
    spec = one(rendered[name], "DaemonSet", "deviceplugin")["spec"]["template"]["spec"]
    volumes = {
        v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v and v["name"] != "device-plugins"
    }
    assert volumes == host_paths
    mounts = {
        m["name"]: m["mountPath"]
        for m in container(one(rendered[name], "DaemonSet", "deviceplugin"), "deviceplugin")["volumeMounts"]
    }
    for volume, path in host_paths.items():
        assert mounts[volume] == ("/dev/shm" if volume == "mps-shm" else path)


def test_settings_env_names_exist(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every GPUPOOL_* variable the chart gives the extender / node agent is a field of its settings."""
    from controller.settings import ControllerSettings
    from deviceplugin.settings import DevicePluginSettings
    from extender.settings import ExtenderSettings

    pending = {"GPUPOOL_METRICS_HOST", "GPUPOOL_METRICS_PORT"}  # extender: requested second listener
    for kind, comp, cname, settings, allowed in (
        ("Deployment", "scheduler", "extender", ExtenderSettings, pending),
        ("DaemonSet", "deviceplugin", "deviceplugin", DevicePluginSettings, set()),
        ("Deployment", "controller", "controller", ControllerSettings, set()),
    ):
        for name in (
            "defaults",
            "backend-mps",
            "backend-mps-unmanaged",
            "backend-pool",
            "backend-hami-core",
            "kind-fake-inventory",
            "everything-else",
        ):
            e = env(container(one(rendered[name], kind, comp), cname))
            fields = {f"GPUPOOL_{f.upper()}" for f in settings.model_fields}
            unknown = {k for k in e if k.startswith("GPUPOOL_")} - fields - allowed
            assert not unknown, f"{cname}: env not in {settings.__name__}: {sorted(unknown)}"


def test_metrics_and_servicemonitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not chart.find(rendered["defaults"], "ServiceMonitor")
    sm = one(rendered["metrics-servicemonitor"], "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    svcs = [
        o
        for o in rendered["metrics-servicemonitor"]
        if o["kind"] == "Service" and (o["metadata"].get("labels") or {}).get("gpupool.io/metrics") == "true"
    ]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in svcs} == {
        "controller",
        "deviceplugin",
        "scheduler",
    }
    assert all(s["metadata"]["labels"][k] == v for s in svcs for k, v in sm["spec"]["selector"]["matchLabels"].items())
    dash = next(
        o for o in rendered["defaults"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("dashboard")
    )
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dash["data"]["gpupool.json"])
    assert not [o for o in rendered["everything-else"] if o["kind"] == "Service" and "metrics" in o["metadata"]["name"]]


def test_pdbs_and_default_queue(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pdbs = {p["metadata"]["name"] for p in chart.find(rendered["defaults"], "PodDisruptionBudget")}
    assert pdbs == {"gpupool-controller", "gpupool-scheduler"}
    assert not chart.find(rendered["everything-else"], "PodDisruptionBudget")  # replicas 1: no PDB
    assert not chart.find(rendered["defaults"], "GPUQueue")
    (q,) = chart.find(rendered["everything-else"], "GPUQueue")
    assert q["spec"]["nominalQuota"] == {"compute": 400, "memoryMiB": 65536}
    assert q["spec"]["namespaceSelector"] == {}


def test_flowschema_puts_gpupool_scheduling_at_kube_schedulers_priority(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The gpupool-scheduler pod (kube-scheduler + extender) and the controller's pod patches at workload-high,
    ahead of the built-in "service-accounts" schema (precedence 9000) that would put them at workload-low."""
    (fs,) = chart.find(rendered["defaults"], "FlowSchema")
    spec = fs["spec"]
    assert fs["apiVersion"] == "flowcontrol.apiserver.k8s.io/v1"
    assert spec["priorityLevelConfiguration"] == {"name": "workload-high"}
    assert spec["matchingPrecedence"] == 850 < 9000
    accounts = {
        c: one(rendered["defaults"], "Deployment", c)["spec"]["template"]["spec"]["serviceAccountName"]
        for c in ("scheduler", "controller")
    }
    sa = {c: [{"kind": "ServiceAccount", "serviceAccount": {"name": n, "namespace": NS}}] for c, n in accounts.items()}
    sched, ctl = spec["rules"]
    assert sched["subjects"] == sa["scheduler"]
    assert sched["resourceRules"][0]["verbs"] == ["*"] and sched["resourceRules"][0]["resources"] == ["*"]
    assert ctl["subjects"] == sa["controller"]
    assert ctl["resourceRules"] == [{"verbs": ["patch"], "apiGroups": [""], "resources": ["pods"], "namespaces": ["*"]}]
    assert not chart.find(rendered["everything-else"], "FlowSchema")  # apiPriority.enabled false
