"""Prometheus metrics with controller-runtime's names and meanings, plus Distillery's own.

Per-Distillation series are produced by a collector from the cache at scrape
time, so a deleted Distillation's series disappear with it.
"""

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from distillery.api.status import Phase, seconds_between

CONTROLLER = "distillation"
REGISTRY = CollectorRegistry()
# process_* (memory, CPU, open files) and python_* (GC, version), as the default registry would have them.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

RECONCILE_TOTAL = Counter("controller_runtime_reconcile_total", "Total number of reconciliations per controller",
                          ["controller", "result"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("controller_runtime_reconcile_errors_total",
                           "Total number of reconciliation errors per controller", ["controller"], registry=REGISTRY)
TERMINAL_ERRORS = Counter("controller_runtime_terminal_reconcile_errors_total",
                          "Total number of terminal reconciliation errors per controller", ["controller"],
                          registry=REGISTRY)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds", "Length of time per reconciliation per controller", ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
             1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60),
    registry=REGISTRY)
MAX_CONCURRENT = Gauge("controller_runtime_max_concurrent_reconciles",
                       "Maximum number of concurrent reconciles per controller", ["controller"], registry=REGISTRY)
ACTIVE_WORKERS = Gauge("controller_runtime_active_workers", "Number of currently used workers per controller",
                       ["controller"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of workqueue", ["name"], registry=REGISTRY)
QUEUE_WAIT = Histogram("workqueue_queue_duration_seconds", "How long in seconds an item stays in workqueue before "
                       "being requested", ["name"], registry=REGISTRY,
                       buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
API_REQUESTS = Counter("distillery_api_requests_total", "Requests the operator sent to the API server",
                       ["verb", "kind", "code"], registry=REGISTRY)

# Series that exist from the start read 0 rather than "no data" (rate() over them works at once).
for result in ("success", "error"):
    RECONCILE_TOTAL.labels(CONTROLLER, result).inc(0)
RECONCILE_ERRORS.labels(CONTROLLER).inc(0)
TERMINAL_ERRORS.labels(CONTROLLER).inc(0)


class DistillationCollector(Collector):
    """Distillations by phase, stage durations, GPU-hours, rows labelled and teacher tokens, from the cache."""

    def __init__(self, distillations: Callable[[], list[dict[str, Any]]]) -> None:
        self._distillations = distillations

    def collect(self) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily("distillery_distillations", "Distillations by phase", labels=["phase"])
        gpu_hours = CounterMetricFamily("distillery_gpu_hours", "GPU-hours used per Distillation and stage",
                                        labels=["namespace", "name", "stage"])
        durations = GaugeMetricFamily("distillery_stage_duration_seconds", "Wall time of finished stages",
                                      labels=["namespace", "name", "stage"])
        rows = CounterMetricFamily("distillery_rows_labeled", "Rows labelled by the teacher",
                                   labels=["namespace", "name", "result"])
        tokens = CounterMetricFamily("distillery_teacher_tokens", "Teacher tokens used for labelling",
                                     labels=["namespace", "name", "direction"])
        counts = {p.value: 0 for p in Phase}
        for body in self._distillations():
            meta = body.get("metadata") or {}
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            status = body.get("status") or {}
            phase = status.get("phase") or Phase.PENDING.value
            counts[phase] = counts.get(phase, 0) + 1
            for stage, record in (status.get("stages") or {}).items():
                if record.get("gpuHours") is not None:
                    gpu_hours.add_metric([namespace, name, stage], float(record["gpuHours"]))
                seconds = seconds_between(record.get("startTime"), record.get("completionTime"))
                if seconds is not None:
                    durations.add_metric([namespace, name, stage], seconds)
            progress = status.get("progress") or {}
            for result, key in (("ok", "rowsLabeled"), ("rejected", "rowsRejected")):
                if progress.get(key) is not None:
                    rows.add_metric([namespace, name, result], float(progress[key]))
            for direction, key in (("in", "teacherTokensIn"), ("out", "teacherTokensOut")):
                if progress.get(key) is not None:
                    tokens.add_metric([namespace, name, direction], float(progress[key]))
        for phase, count in counts.items():
            by_phase.add_metric([phase], count)
        yield from (by_phase, gpu_hours, durations, rows, tokens)

