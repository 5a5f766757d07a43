"""Failures that heal, with the real workloads: a teacher gone mid-labeling, a training node lost mid-run.

The stage pods' programs run through the local kubelet (like test_end_to_end), so what heals is the real
labeler and trainer against the real operator."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillery.devcluster.demo import local_sample
from tests.cluster.distillations import condition
from tests.cluster.kube import Kube, node_deleted, training_restarted
from tests.cluster.pipeline import Pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.workload]

OUTAGE_S = 120
"""The scenario: the teacher is away this long, mid-labeling (not a bound on anything)."""


@pytest.fixture
def pipeline(kube: Kube, crd: None, namespace: str, tmp_path: Path) -> Iterator[Pipeline]:
    manifest = local_sample()
    manifest["spec"]["evaluation"] = {"enabled": False}
    p = Pipeline(kube, namespace, tmp_path, manifest)
    try:
        yield p
    finally:
        p.stop()


def test_labeling_waits_out_a_teacher_gone_for_two_minutes_and_asks_no_row_twice(
        kube: Kube, pipeline: Pipeline) -> None:
    spec = pipeline.manifest["spec"]
    # One request at a time, each answered after 0.4 s: the outage comes while rows are still unlabeled.
    spec["teacher"]["concurrency"] = 1
    spec["student"]["epochs"] = 1
    pipeline.start()
    pipeline.teacher("/admin/faults", {"latency_ms": 400})
    pipeline.apply()
    rows = len(spec["dataset"]["train"]["rows"]) + len(spec["dataset"]["validation"]["rows"])
    kube.wait_for(lambda: pipeline.teacher("/admin/stats")["total_requests"] >= 4, 300, interval=0.2,
                  what="the labeler asking the teacher")

    # The teacher goes away: its server stops answering and its pod is deleted (the Deployment makes another).
    pipeline.workloads.stop_teacher()
    gone = time.monotonic()
    kube.run("delete", "pod", "-n", pipeline.namespace, "-l", "distillery.dev/stage=teacher", "--wait=false")
    waiting = kube.wait_for(lambda: (c := condition(pipeline.get(), "Labeled")) and
                            c["reason"] == "WaitingForTeacher" and c, 120, what="labeling waiting for the teacher")
    assert "outageBudgetSeconds" in waiting["message"], waiting
    labeled_during_outage = pipeline.get()["status"]["progress"]
    assert labeled_during_outage["rowsLabeled"] < rows, "the outage came after labeling"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - gone)))
    pipeline.workloads.start_teacher()

    kube.wait_for(lambda: (c := condition(pipeline.get(), "Labeled")) and c["status"] == "True", 300,
                  what="labeling to finish")
    # Taken before anything else asks the teacher: every row answered once, none asked again once answered.
    stats = pipeline.teacher("/admin/stats")
    dist = pipeline.finished()
    status = dist["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"]["rowsLabeled"] == rows
    assert stats["answered_prompts"] == rows and stats["max_answers_per_prompt"] == 1, stats
    pods = kube.get("pods", namespace=pipeline.namespace, selector="distillery.dev/stage=labeling")["items"]
    assert len(pods) == 1, "the labeling pod waited; the Job did not replace it"
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_a_training_node_deleted_mid_run_restarts_the_group_from_its_last_checkpoint(
        kube: Kube, pipeline: Pipeline, tmp_path: Path) -> None:
    spec = pipeline.manifest["spec"]
    # Two training pods (one torch group over gloo, run here), 120 steps, a checkpoint every 4.
    spec["student"].update({"nodes": 2, "gpusPerNode": 1, "epochs": 40, "checkpointSteps": 4,
                            "terminationGraceSeconds": 30})
    pipeline.start()
    pipeline.apply()
    ns = pipeline.namespace
    claim = kube.wait_for(lambda: kube.get("pvc", f"{pipeline.name}-workspace", ns), 60, what="the workspace claim")
    checkpoints = tmp_path / "local" / "claims" / f"{pipeline.name}-workspace-{claim['metadata']['uid']}" / "train" \
        / "checkpoints"
    kube.wait_for(lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()),
                  900, interval=1, what="the first training checkpoint")
    pods = kube.get("pods", namespace=ns, selector="distillery.dev/stage=training")["items"]
    lost = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    # The node goes: its pod's processes freeze (the local kubelet's lost machine), rank 0 waits for them in a
    # collective, the pod GC marks the pod DisruptionTarget and the Job replaces it.
    with node_deleted(kube, lost["spec"]["nodeName"]):
        restarted = training_restarted(kube, ns)
        assert "attempt 2" in restarted["message"] and "disruption" in restarted["message"], restarted
        dist = pipeline.finished()
    status = dist["status"]
    assert status["phase"] == "Succeeded", status
    assert status["stages"]["training"]["attempts"] == 2, status["stages"]["training"]
    finished = kube.get("pods", namespace=ns, selector="distillery.dev/stage=training")["items"]
    summaries = [json.loads(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]) for p in finished]
    assert len(summaries) == 2, "only the second attempt's two pods remain"
    assert all(s["resumed_from_step"] >= 4 for s in summaries), summaries
    assert status["progress"]["trainStep"] == status["progress"]["trainSteps"] > summaries[0]["resumed_from_step"]
