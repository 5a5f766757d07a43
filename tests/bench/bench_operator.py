"""Operator benchmark: N Distillations applied at once on the local control plane with fast kwok stages.

Reports the time until all have Succeeded, API writes per Distillation (from the
apiserver's own /metrics and from the operator's counters), the p50/p95 delay
from a child's state change to the Distillation's status update (both seen by
one watcher), and the operator's peak RSS.

    python tests/bench/bench_operator.py --count 200
"""

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
import yaml

from distillery.api.crd import render
from distillery.devcluster.cluster import DevCluster
from distillery.devcluster.nodepools import NodePools
from distillery.devcluster.ports import free_port

NODEPOOLS = Path(__file__).resolve().parents[2] / "operator/distillery/devcluster/nodepools-bench.yaml"
# Writes only the operator makes: (verb, resource, subresource).
OPERATOR_WRITES = {
    ("POST", "persistentvolumeclaims", ""), ("POST", "configmaps", ""), ("POST", "deployments", ""),
    ("POST", "services", ""), ("POST", "jobs", ""), ("DELETE", "deployments", ""), ("DELETE", "services", ""),
    ("PATCH", "distillations", "status"), ("PATCH", "jobs", ""), ("PATCH", "deployments", ""),
    ("POST", "serviceaccounts", ""), ("POST", "roles", ""), ("POST", "rolebindings", ""),
}
MIN_WRITES = 14 + 2 + 6
"""14 child creates (with the progress ConfigMap and the stage pods' ServiceAccount, Role and RoleBinding),
2 teacher deletes, 6 status transitions (teacher starting, labeling, training, evaluating, serving, succeeded)."""


def manifest(i: int) -> dict:
    return {
        "apiVersion": "distillery.dev/v1alpha1", "kind": "Distillation",
        "metadata": {"name": f"bench-{i:04d}", "namespace": "bench"},
        "spec": {
            "task": "nli", "region": "westus3",
            "teacher": {"model": "meta-llama/Llama-3.1-8B-Instruct", "gpus": 1},
            "dataset": {"train": {"rows": [{"premise": "p", "hypothesis": "h", "label": "neutral"}]}},
            "student": {"model": "Qwen/Qwen2.5-0.5B-Instruct", "gpusPerNode": 1},
            "serving": {"gpus": 1},
            "storage": {"size": "10Gi", "storageClassName": STATIC_CLASS},
        },
    }


STATIC_CLASS = "bench-static"
"""kwok binds dynamically provisioned claims one at a time; pre-made volumes are bound by the
controller-manager's binder in parallel, so the simulation does not throttle the operator."""


def scaled_nodepools(count: int, path: Path) -> Path:
    """The bench fleet, grown so that `count` Distillations fit at their peak: each holds a teacher, a
    trainer and a student GPU (8 to a node), and a labeling pod on a CPU node."""
    pools = NodePools.load(NODEPOOLS)
    for pool in pools.pools:
        needed = math.ceil(3 * count / pool.gpus) if pool.gpus else math.ceil(count / 5)
        pool.count = max(pool.count, needed)
    path.write_text(yaml.safe_dump(pools.model_dump(by_alias=True, exclude_defaults=True)))
    return path


def static_volumes(count: int) -> list[dict]:
    storage_class = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": STATIC_CLASS},
                     "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}
    volumes = [{
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"bench-pv-{i:04d}"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": STATIC_CLASS,
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/bench-pv-{i:04d}"}},
    } for i in range(count)]
    return [storage_class, *volumes]


def apiserver_writes(cluster: DevCluster) -> Counter:
    text = cluster.api_get("/metrics")
    counts: Counter = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        if key in OPERATOR_WRITES:
            counts[key] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    found = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = dict(re.findall(r'(\w+)="([^"]*)"', line))["le"]
            found.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(found)


def histogram_count(text: str, name: str) -> int:
    buckets = _buckets(text, name)
    return int(buckets[-1][1]) if buckets else 0


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    buckets = _buckets(text, name)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return round(lower + (upper - lower) * (rank - below) / max(count - below, 1e-9), 3)
        lower, below = upper, count
    return lower


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch_delays(kubeconfig: Path, count: int, timeout: float) -> tuple[list[float], float]:
    """Local receive time of each Job completion vs of the status that records it."""
    api = kubernetes.config.new_client_from_config(str(kubeconfig))
    batch, custom = kubernetes.client.BatchV1Api(api), kubernetes.client.CustomObjectsApi(api)
    job_done: dict[tuple[str, str], float] = {}
    status_done: dict[tuple[str, str], float] = {}
    succeeded: set[str] = set()
    stage_of_job = {"label": "labeling", "train": "training", "eval": "evaluation"}
    started = time.monotonic()
    deadline = started + timeout

    def on_job(job: dict) -> None:
        parent, _, suffix = job["metadata"]["name"].rpartition("-")
        conds = (job.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Complete" and c["status"] == "True" for c in conds):
            job_done.setdefault((parent, stage_of_job[suffix]), time.monotonic())

    def on_distillation(d: dict) -> None:
        status = d.get("status") or {}
        for stage, record in (status.get("stages") or {}).items():
            if record.get("state") == "Succeeded":
                status_done.setdefault((d["metadata"]["name"], stage), time.monotonic())
        if status.get("phase") == "Succeeded":
            succeeded.add(d["metadata"]["name"])

    def follow(list_call: Callable[..., Any], args: tuple[str, ...], record: Callable[[dict], None]) -> None:
        while len(succeeded) < count and time.monotonic() < deadline:
            # A watch the server ends early (it is busy, or restarting) is simply watched again.
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                for event in kubernetes.watch.Watch().stream(list_call, *args, timeout_seconds=30):
                    record(event["raw_object"])
                    if len(succeeded) >= count:
                        return

    watchers = [threading.Thread(target=follow, args=(batch.list_namespaced_job, ("bench",), on_job), daemon=True),
                threading.Thread(target=follow, args=(custom.list_namespaced_custom_object,
                                                      ("distillery.dev", "v1alpha1", "bench", "distillations"),
                                                      on_distillation), daemon=True)]
    for thread in watchers:
        thread.start()
    watchers[1].join(timeout)
    if len(succeeded) < count:
        raise TimeoutError(f"{len(succeeded)}/{count} Distillations succeeded within {timeout:.0f} s")
    delays = [status_done[k] - t for k, t in job_done.items() if k in status_done]
    return delays, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--stage-delay", default="1s")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cluster = DevCluster("bench", scaled_nodepools(args.count, Path(tmp) / "nodepools.yaml"))
        cluster.down()
        kubeconfig = cluster.up()
        crd = Path(tmp) / "crd.yaml"
        crd.write_text(render())
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.wait_established("distillations.distillery.dev")
        cluster.kubectl("create", "namespace", "bench")
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(static_volumes(args.count)))
        config = Path(tmp) / "operator.yaml"
        config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay":
                                                              args.stage_delay}}))
        env = os.environ | {"KUBECONFIG": str(kubeconfig), "DISTILLERY_CONFIG": str(config)}
        log = open(Path(tmp) / "operator.log", "wb")
        metrics_port = free_port()
        operator = subprocess.Popen([sys.executable, "-m", "distillery.cli", "operator",
                                     "--metrics-port", str(metrics_port), "--liveness", ""],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        time.sleep(3)
        before = apiserver_writes(cluster)
        docs = yaml.safe_dump_all([manifest(i) for i in range(args.count)])
        t0 = time.monotonic()
        result: dict = {}

        def run_watch() -> None:
            result["delays"], result["watched"] = watch_delays(kubeconfig, args.count, args.timeout)

        thread = threading.Thread(target=run_watch)
        thread.start()
        time.sleep(1)
        cluster.kubectl("apply", "--server-side", "-f", "-", input=docs)
        applied = time.monotonic() - t0
        thread.join()
        total = time.monotonic() - t0
        after = apiserver_writes(cluster)
        peak = rss_peak_mib(operator.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            op_metrics = r.read().decode()
        operator.terminate()
        operator.wait(15)
        log.close()

    writes = {"/".join(filter(None, k)): after[k] - before.get(k, 0) for k in sorted(after)}
    total_writes = sum(writes.values())
    op_requests = Counter()
    for line in op_metrics.splitlines():
        if line.startswith("distillery_api_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            op_requests[f"{labels['verb']} {labels['kind']} {labels['code']}"] += int(float(line.rsplit(" ", 1)[1]))
    events = sum(v for k, v in op_requests.items() if "Event" in k)
    delays = sorted(result.get("delays", []))
    report = {
        "distillations": args.count,
        "stage_delay": args.stage_delay,
        "apply_seconds": round(applied, 1),
        "all_succeeded_seconds": round(total, 1),
        "apiserver_operator_writes_per_distillation": round(total_writes / args.count, 2),
        "minimum_writes_per_distillation": MIN_WRITES,
        "ratio_to_minimum": round(total_writes / args.count / MIN_WRITES, 2),
        "writes_by_kind": writes,
        "operator_requests_by_kind": dict(sorted(op_requests.items())),
        "events_per_distillation": round(events / args.count, 2),
        "status_delay_p50_s": round(statistics.median(delays), 3) if delays else None,
        "status_delay_p95_s": round(delays[int(0.95 * (len(delays) - 1))], 3) if delays else None,
        "status_delay_samples": len(delays),
        "operator_peak_rss_mib": round(peak, 1),
        # Where the delay goes inside the operator: waiting for a worker, then the pass itself.
        "queue_wait_p50_s": histogram_quantile(op_metrics, "workqueue_queue_duration_seconds", 0.5),
        "queue_wait_p95_s": histogram_quantile(op_metrics, "workqueue_queue_duration_seconds", 0.95),
        "reconcile_p50_s": histogram_quantile(op_metrics, "controller_runtime_reconcile_time_seconds", 0.5),
        "reconcile_p95_s": histogram_quantile(op_metrics, "controller_runtime_reconcile_time_seconds", 0.95),
        "reconciles": histogram_count(op_metrics, "controller_runtime_reconcile_time_seconds"),
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
