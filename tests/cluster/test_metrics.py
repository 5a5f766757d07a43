"""The operator's Prometheus endpoint, scraped during a real pipeline run."""

import re

import pytest

from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster


def samples(text: str, name: str) -> dict[str, float]:
    """label-string -> value for one metric family in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            out[match.group(1) or ""] = float(match.group(2))
    return out


def test_controller_runtime_and_distillery_metrics_follow_a_distillation(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    errors_key = '{controller="distillation"}'
    errors_before = samples(operator.metrics(), "controller_runtime_reconcile_errors_total")[errors_key]
    # The workspace create is refused (403, over quota), which is a reconcile error.
    kube.deny_claims(namespace)
    kube.apply(distillation("metered"), namespace=namespace)
    kube.wait_for(lambda: samples(operator.metrics(), "controller_runtime_reconcile_errors_total")[errors_key]
                  > errors_before, 60, what="a reconcile error counted")
    refused = samples(operator.metrics(), "distillery_api_requests_total")
    assert refused.get('{code="403",kind="PersistentVolumeClaim",verb="create"}', 0) >= 1
    kube.run("delete", "resourcequota", "no-claims", "-n", namespace)

    kube.wait_for(lambda: (condition(kube.get("distillation", "metered", namespace), "Succeeded") or {})
                  .get("status") == "True", 120, what="Succeeded")
    text = operator.metrics()
    totals = samples(text, "controller_runtime_reconcile_total")
    assert totals['{controller="distillation",result="success"}'] > 0
    assert totals['{controller="distillation",result="error"}'] >= 1
    assert samples(text, "controller_runtime_reconcile_time_seconds_count")['{controller="distillation"}'] > 0
    assert samples(text, "process_resident_memory_bytes")[""] > 0
    assert any('implementation="CPython"' in k for k in samples(text, "python_info"))
    assert samples(text, "distillery_distillations")['{phase="Succeeded"}'] >= 1

    def ours(labels: str) -> bool:
        return f'namespace="{namespace}"' in labels and 'name="metered"' in labels

    assert any(ours(k) for k in samples(text, "distillery_gpu_hours_total"))
    assert any(ours(k) for k in samples(text, "distillery_stage_duration_seconds"))
    created = samples(text, "distillery_api_requests_total")
    assert created['{code="201",kind="Job",verb="create"}'] >= 3

    kube.run("delete", "distillation", "metered", "-n", namespace, "--wait=true", "--timeout=60s")
    kube.wait_for(lambda: not any(ours(line) for line in operator.metrics().splitlines()), 30,
                  what="per-Distillation series removed")
