"""Kueue (the real manager, v0.17) gates the stage Jobs: the operator queues, Kueue admits."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from distillery.devcluster import kueue as devkueue
from distillery.devcluster.cluster import DevCluster
from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube, install_crd, node_deleted, running_cluster, training_restarted
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

OPERATOR_MANAGER = "distillery-operator"


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    """A cluster of its own: Kueue's webhooks (failurePolicy Fail) must not outlive these tests on the cluster
    every other test shares, where a stopped Kueue would refuse every Job."""
    yield from running_cluster("-kueue")


@pytest.fixture(scope="module")
def kube(cluster: DevCluster) -> Kube:
    return Kube(cluster)


@pytest.fixture(scope="module")
def crd(kube: Kube) -> None:
    install_crd(kube)


@pytest.fixture(scope="module")
def kueue(cluster: DevCluster) -> None:
    cluster.start_kueue()


def training(name: str) -> dict[str, Any]:
    """2 nodes x 8 H100s: one training takes the ClusterQueue's whole quota of 16."""
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "15s"}
    return distillation(name, teacher={"endpoint": {"url": "http://teacher.invalid/v1", "model": "m"}},
                        evaluation={"enabled": False}, serving={"enabled": False},
                        scheduling={"queueName": devkueue.LOCAL_QUEUE, "podAnnotations": slow})


def job_with_managed_fields(kube: Kube, name: str, namespace: str) -> dict[str, Any] | None:
    result = kube.run("get", "job", name, "-n", namespace, "-o", "json", "--show-managed-fields", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def suspend_owners(job: dict[str, Any]) -> set[str]:
    """The field managers that own spec.suspend: for an update, whoever last changed its value."""
    return {entry["manager"] for entry in job["metadata"].get("managedFields") or []
            if "f:suspend" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})}


def test_a_second_distillation_over_the_quota_queues_until_the_first_finishes(
        kube: Kube, namespace: str, kueue: None, operator: OperatorProcess) -> None:
    kube.apply(devkueue.local_queue(namespace))
    names = ("first", "second")
    for name in names:
        kube.apply(training(name), namespace=namespace)

    # Who set spec.suspend=false on each training Job, seen while it ran (finished Jobs may go).
    unsuspended_by: dict[str, set[str]] = {}
    # The Trained messages of a Distillation whose training was queued while the other's ran.
    waited: dict[str, list[str]] = {}
    succeeded: set[str] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and succeeded != set(names):
        for name in names:
            job = job_with_managed_fields(kube, f"{name}-train", namespace)
            if job and job["spec"].get("suspend") is False:
                unsuspended_by[name] = suspend_owners(job)
            dist = kube.get("distillation", name, namespace) or {}
            trained = condition(dist, "Trained") or {}
            if trained.get("reason") == "QueuedByKueue":
                other = next(n for n in names if n != name)
                other_trained = condition(kube.get("distillation", other, namespace), "Trained") or {}
                if other_trained.get("reason") == "Running":
                    waited.setdefault(name, []).append(trained["message"])
            if (condition(dist, "Succeeded") or {}).get("status") == "True":
                succeeded.add(name)
        time.sleep(0.5)
    assert succeeded == set(names), f"not all succeeded: {succeeded}, waited: {waited}"

    # One training had the quota; the other waited on it, in Kueue's own words once Kueue had tried it.
    assert len(waited) == 1, waited
    [(waiter, messages)] = waited.items()
    first = next(n for n in names if n != waiter)
    assert all(m.startswith(f"queued in Kueue LocalQueue {devkueue.LOCAL_QUEUE}: ") for m in messages), messages
    assert any("insufficient unused quota for nvidia.com/gpu" in m for m in messages), messages
    dist = kube.get("distillation", waiter, namespace)
    stages = {n: kube.get("distillation", n, namespace)["status"]["stages"]["training"] for n in names}
    assert stages[waiter]["startTime"] >= stages[first]["completionTime"], stages
    assert condition(dist, "Stalled")["status"] == "False"

    # Only Kueue un-suspended the Jobs: the operator never owns spec.suspend=false, nor says it resumed one.
    assert set(unsuspended_by) == set(names), unsuspended_by
    for name, owners in unsuspended_by.items():
        assert OPERATOR_MANAGER not in owners and "kueue" in owners, (name, owners)
    events = kube.get("events", namespace=namespace)["items"]
    ours = [e for e in events if (e.get("source") or {}).get("component") == OPERATOR_MANAGER]
    assert [e for e in ours if e["reason"] == "QueuedByKueue"], "the operator told about the wait"
    assert not [e for e in ours if e["reason"] == "Resumed"]


def test_suspend_deletes_an_admitted_job_and_resume_queues_it_again(
        kube: Kube, namespace: str, kueue: None, operator: OperatorProcess) -> None:
    kube.apply(devkueue.local_queue(namespace))
    manifest = training("pause")
    manifest["spec"]["scheduling"]["podAnnotations"] = {"pod-complete.stage.kwok.x-k8s.io/delay": "300s"}
    kube.apply(manifest, namespace=namespace)
    kube.wait_for(lambda: (job := kube.get("job", "pause-label", namespace)) and job["spec"]["suspend"] is False,
                  90, what="Kueue admits the labeling job")
    uid = kube.get("job", "pause-label", namespace)["metadata"]["uid"]
    kube.run("patch", "distillation", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    kube.wait_for(lambda: (job := kube.get("job", "pause-label", namespace)) is None
                  or job["metadata"].get("deletionTimestamp"), 60, what="labeling job deleted")
    dist = kube.wait_for(lambda: (d := kube.get("distillation", "pause", namespace))["status"].get("phase")
                         == "Suspended" and d, 30, what="Suspended phase")
    assert condition(dist, "Suspended")["status"] == "True"

    kube.run("patch", "distillation", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    kube.wait_for(lambda: (j := kube.get("job", "pause-label", namespace)) and j["metadata"]["uid"] != uid
                        and j, 60, what="a new labeling job")
    kube.wait_for(lambda: kube.get("job", "pause-label", namespace)["spec"]["suspend"] is False, 90,
                  what="Kueue admits the new labeling job")
    owners = suspend_owners(job_with_managed_fields(kube, "pause-label", namespace) or {"metadata": {}})
    assert OPERATOR_MANAGER not in owners and "kueue" in owners, owners


def test_a_disrupted_training_group_restarts_through_kueue_and_gives_its_quota_back(
        kube: Kube, namespace: str, kueue: None, operator: OperatorProcess) -> None:
    """A training node is deleted mid-run under Kueue: the operator's foreground delete must get past the
    Workload Kueue owns (and its finalizer), the next attempt queue and be admitted by Kueue alone, and the
    quota of the first attempt come back for it (16 GPUs, the whole ClusterQueue)."""
    kube.apply(devkueue.local_queue(namespace))
    manifest = training("disrupted")
    # Longer than the pod GC takes to mark a pod whose node is gone (40 s quarantine, checked every 20 s).
    manifest["spec"]["scheduling"]["podAnnotations"] = {"pod-complete.stage.kwok.x-k8s.io/delay": "120s"}
    kube.apply(manifest, namespace=namespace)
    first = kube.wait_for(lambda: (job := kube.get("job", "disrupted-train", namespace)) and
                          job["spec"].get("suspend") is False and job, 240, what="Kueue admits training")
    pods = kube.wait_for(lambda: [p for p in kube.get("pods", namespace=namespace,
                                                      selector="distillery.dev/stage=training")["items"]
                                  if p["status"].get("phase") == "Running"] or None, 60, what="training pods run")
    lost = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    with node_deleted(kube, lost["spec"]["nodeName"]):
        restarted = training_restarted(kube, namespace)
        assert "attempt 2" in restarted["message"] and "disruption" in restarted["message"], restarted
        second = kube.wait_for(lambda: (job := kube.get("job", "disrupted-train", namespace)) and
                               job["metadata"]["uid"] != first["metadata"]["uid"] and job, 180,
                               what="the second attempt's Job (the first one's Workload gone)")
        assert second["metadata"]["annotations"]["distillery.dev/attempt"] == "2"
        kube.wait_for(lambda: (condition(kube.get("distillation", "disrupted", namespace), "Succeeded") or {})
                      .get("status") == "True", 600, what="disrupted Succeeded")
    owners = suspend_owners(job_with_managed_fields(kube, "disrupted-train", namespace) or {"metadata": {}})
    assert OPERATOR_MANAGER not in owners and "kueue" in owners, owners
    training_status = kube.get("distillation", "disrupted", namespace)["status"]["stages"]["training"]
    assert training_status["attempts"] == 2 and not training_status.get("failures"), training_status

