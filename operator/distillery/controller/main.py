"""`distillery operator`: kopf wiring.

Index handlers hold what the planner reads (kopf fills them before it runs any other handler: the sync
barrier); event handlers only decide which Distillation an event concerns and mark it; worker tasks run
the reconciler (observe, plan, apply) for marked Distillations, never two passes of one at once.
"""

import argparse
import asyncio
import concurrent.futures
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
from prometheus_client import start_http_server

from distillery.api.config import OperatorConfig
from distillery.api.crd import GROUP, PLURAL, VERSION
from distillery.controller import cache, metrics
from distillery.controller.cache import (
    CHILD_KINDS,
    DISTILLATIONS,
    KUEUE_WORKLOAD,
    NODES,
    PODS,
    WORKLOADS,
    ClusterCache,
    Key,
)
from distillery.controller.kube import CredentialsError, KubeClient, connection_info, load_configuration
from distillery.controller.liveness import LivenessEndpoint
from distillery.controller.reconciler import Reconciler
from distillery.controller.workqueue import Backoff, WorkQueue
from distillery.resources.common import PARENT_LABEL

WORKERS = 16
SCRAPE_TIMEOUT_S = 10
T = TypeVar("T")


class Runtime:
    """Process-wide state shared by the handlers (kopf handlers are module-level functions)."""

    def __init__(self) -> None:
        self.config = OperatorConfig()
        self.kubeconfig: str | None = None
        self.context: str | None = None
        self.cache = ClusterCache()
        self.queue: WorkQueue[Key] = WorkQueue(metrics.QUEUE_DEPTH.labels(metrics.CONTROLLER).set,
                                               metrics.QUEUE_WAIT.labels(metrics.CONTROLLER).observe)
        self.backoff: Backoff[Key] = Backoff()
        self.client: KubeClient | None = None
        self.liveness: LivenessEndpoint | None = None
        self.reconciler: Reconciler | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[None]] = []


runtime = Runtime()
CHILD_FILTER = {PARENT_LABEL: kopf.PRESENT}


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use the credentials the writes use; kopf calls this again after a 401, which
    reloads them (an exec plugin then mints a fresh token)."""
    configuration = await asyncio.to_thread(load_configuration, runtime.kubeconfig, runtime.context)
    return connection_info(configuration)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # We post our own bounded Events; kopf's log-to-Event posting would add writes per handler call.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.batching.batch_window = 0.05

    runtime.loop = asyncio.get_running_loop()
    runtime.client = KubeClient(await asyncio.to_thread(load_configuration, runtime.kubeconfig, runtime.context))
    runtime.reconciler = Reconciler(runtime.client, runtime.cache, runtime.config)
    metrics.MAX_CONCURRENT.labels(metrics.CONTROLLER).set(WORKERS)
    runtime.tasks = [asyncio.create_task(runtime.queue.worker(_work)) for _ in range(WORKERS)]
    runtime.tasks.append(asyncio.create_task(_resync()))
    if runtime.liveness is not None:
        await runtime.liveness.serve()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    if runtime.client is not None:
        await runtime.client.close()
    if runtime.liveness is not None:
        await runtime.liveness.close()


async def _work(key: Key) -> None:
    assert runtime.reconciler is not None
    metrics.ACTIVE_WORKERS.labels(metrics.CONTROLLER).inc()
    try:
        if await runtime.reconciler.reconcile(key):
            runtime.backoff.succeeded(key)
        else:
            runtime.queue.add_after(key, runtime.backoff.failed(key))
    finally:
        metrics.ACTIVE_WORKERS.labels(metrics.CONTROLLER).dec()


async def _resync() -> None:
    """Level-triggered safety net: re-plan every Distillation now and then, events or not."""
    while True:
        await asyncio.sleep(runtime.config.resync_seconds)
        for key in runtime.cache.keys():
            runtime.queue.add(key)


# Indexes: filled from each watch's initial list before any handler below runs. -----------------------------

@kopf.index(GROUP, VERSION, PLURAL, id=DISTILLATIONS)
async def index_distillation(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return cache.distillation_entry(body)


async def index_child(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return cache.child_entry(body)


@kopf.index("", "v1", "pods", labels=CHILD_FILTER, id=PODS)
async def index_pod(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]] | None:
    return cache.pod_entry(body)


@kopf.index("", "v1", "nodes", id=NODES)
async def index_node(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return cache.node_entry(body, runtime.config.gpu_resource)


@kopf.index(*KUEUE_WORKLOAD, id=WORKLOADS)
async def index_workload(body: kopf.Body, **_: Any) -> dict[str, str] | None:
    return cache.workload_entry(body)


# Events: which Distillation to wake. kopf passes every index to every handler. -----------------------------

def _deleted(type_: str | None) -> bool:
    return type_ == "DELETED"


def _wake(key: Key | None) -> None:
    if key is not None and runtime.cache.distillation(key) is not None:
        runtime.queue.add(key)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def distillation_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    runtime.cache.attach(kwargs)
    key = cache.key_of(body)
    if _deleted(type):
        if runtime.reconciler is not None:
            runtime.reconciler.forget(key)
        runtime.backoff.succeeded(key)
    else:
        runtime.queue.add(key)
    # Distillations that reuse this one's labels wait for them to finish (or for it to come back).
    for dist in runtime.cache.distillations():
        if (cache.key_of(dist)[0] == key[0]
                and ((dist.get("spec") or {}).get("dataset") or {}).get("labelsFrom") == key[1]):
            runtime.queue.add(cache.key_of(dist))


async def child_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    runtime.cache.attach(kwargs)
    _wake(runtime.cache.child_changed(body, _deleted(type)))


@kopf.on.event("", "v1", "pods", labels=CHILD_FILTER)
async def pod_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    runtime.cache.attach(kwargs)
    _wake(runtime.cache.pod_changed(body, _deleted(type)))


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    runtime.cache.attach(kwargs)
    # New or changed GPU capacity can unblock Distillations waiting for a node pool.
    if runtime.cache.node_changed(body, _deleted(type), runtime.config.gpu_resource):
        for dist in runtime.cache.distillations():
            if (dist.get("status") or {}).get("phase") != "Succeeded":
                runtime.queue.add(cache.key_of(dist))


@kopf.on.event(*KUEUE_WORKLOAD)
async def workload_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    runtime.cache.attach(kwargs)
    # Admission itself wakes the Distillation through its Job; this brings Kueue's reasons into status.
    _wake(runtime.cache.workload_changed(body, _deleted(type)))


for _kind, (_group, _version, _plural) in CHILD_KINDS.items():
    kopf.index(_group, _version, _plural, labels=CHILD_FILTER, id=_plural)(index_child)
    kopf.on.event(_group, _version, _plural, labels=CHILD_FILTER, id=f"{_plural}-event")(child_event)


def _on_loop(read: Callable[[], T]) -> T:
    """Run `read` on the operator's event loop and wait for it: the metrics endpoint serves from its own
    thread, and the indexes change only on the loop."""
    loop = runtime.loop
    if loop is None:
        raise RuntimeError("the operator's event loop has not started")
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(read())
        except Exception as err:  # handed to the waiting thread, which raises it
            future.set_exception(err)

    loop.call_soon_threadsafe(run)
    return future.result(timeout=SCRAPE_TIMEOUT_S)


def _distillations_for_metrics() -> list[dict[str, Any]]:
    return _on_loop(runtime.cache.distillations) if runtime.cache.synced else []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery operator")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only these namespaces (repeatable; default: all, or the config's list)")
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness endpoint URL (port 0: any free port, logged); empty for none")
    parser.add_argument("--kubeconfig", help="default: in-cluster service account, else $KUBECONFIG")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        runtime.config = OperatorConfig.load()
        # Fail here with one line rather than inside kopf's login retries.
        load_configuration(args.kubeconfig, args.context)
    except (CredentialsError, OSError, ValueError) as err:
        print(f"distillery operator: {err}", file=sys.stderr)
        return 2
    runtime.kubeconfig, runtime.context = args.kubeconfig, args.context
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kopf").setLevel(logging.INFO if args.verbose else logging.WARNING)
    metrics.REGISTRY.register(metrics.DistillationCollector(_distillations_for_metrics))
    # Both ports bound before either answers: a port that is taken fails the start, with one line.
    try:
        runtime.liveness = LivenessEndpoint(args.liveness) if args.liveness else None
        if args.metrics_port:
            start_http_server(args.metrics_port, registry=metrics.REGISTRY)
    except (OSError, ValueError) as err:
        print(f"distillery operator: cannot listen: {err}", file=sys.stderr)
        return 2
    if runtime.liveness is not None:
        logging.getLogger(__name__).info("liveness endpoint at %s", runtime.liveness.url)
    namespaces = args.namespace or runtime.config.namespaces
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    return 0
