"""Webhook configuration manifests (YAML templates here; the Helm chart templates the same files)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
MUTATING = HERE / "mutating.yaml"
VALIDATING = HERE / "validating.yaml"
#: kopf handler ids = URL paths of the two webhooks
MUTATE_PATH = "mutate-pods"
VALIDATE_PATH = "validate-pods"


def load_templates() -> list[dict[str, Any]]:
    return [yaml.safe_load(MUTATING.read_text()), yaml.safe_load(VALIDATING.read_text())]


def render_webhook_configurations(
    base_url: str,
    ca_bundle: bytes | str,
    *,
    name_suffix: str = "",
    timeout_seconds: int | None = None,
    system_users: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration for a webhook server at `base_url`.

    `ca_bundle` is the PEM of the CA that signed the server certificate (bytes or text; it is
    base64-encoded here) or an already base64-encoded string. `name_suffix` keeps parallel test runs apart.
    `system_users` adds the chart's `not-gpupool-itself` match condition (charts/gpupool/templates/webhook.yaml):
    requests of those users (gpupool's service accounts) skip both webhooks, as in an install by the chart.
    """
    if isinstance(ca_bundle, bytes):
        encoded = base64.b64encode(ca_bundle).decode("ascii")
    elif ca_bundle.lstrip().startswith("-----BEGIN"):
        encoded = base64.b64encode(ca_bundle.encode()).decode("ascii")
    else:
        encoded = ca_bundle
    out = []
    for template in load_templates():
        doc = copy.deepcopy(template)
        doc["metadata"]["name"] += name_suffix
        for hook in doc["webhooks"]:
            path = MUTATE_PATH if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATE_PATH
            hook["clientConfig"] = {"url": f"{base_url.rstrip('/')}/{path}", "caBundle": encoded}
            if timeout_seconds is not None:
                hook["timeoutSeconds"] = timeout_seconds
            if system_users:
                hook["matchConditions"].append(
                    {"name": "not-gpupool-itself",
                     "expression": f"!(request.userInfo.username in {json.dumps(list(system_users))})"}
                )  # fmt: skip
        out.append(doc)
    return out
