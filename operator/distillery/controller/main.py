"""`distillery operator`: kopf wiring. Handlers only feed the cache and mark work; the
reconciler (planner + actions) does the rest from worker tasks."""

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from prometheus_client import start_http_server

from distillery.api.config import OperatorConfig
from distillery.api.crd import GROUP, PLURAL, VERSION
from distillery.controller import metrics
from distillery.controller.cache import ClusterCache, Key
from distillery.controller.kube import CredentialsError, KubeClient, connection_info, load_configuration
from distillery.controller.reconciler import RETRY_DELAY, Reconciler
from distillery.controller.workqueue import WorkQueue
from distillery.resources.common import PARENT_LABEL

STORAGE_PREFIX = "distillery.dev"
FINALIZER = "distillery.dev/finalizer"
WORKERS = 16


class Runtime:
    """Process-wide state shared by the handlers (kopf handlers are module-level functions)."""

    def __init__(self) -> None:
        self.config = OperatorConfig()
        self.kubeconfig: str | None = None
        self.context: str | None = None
        self.cache = ClusterCache()
        self.queue: WorkQueue[Key] = WorkQueue(metrics.QUEUE_DEPTH.labels(metrics.CONTROLLER).set)
        self.client: KubeClient | None = None
        self.reconciler: Reconciler | None = None
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
    # Set once, never change: changing storage makes kopf re-handle every object.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration")
    # We post our own bounded Events; kopf's log-to-Event posting would add writes per handler call.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.batching.batch_window = 0.05

    runtime.client = KubeClient(await asyncio.to_thread(load_configuration, runtime.kubeconfig, runtime.context))
    runtime.reconciler = Reconciler(runtime.client, runtime.cache, runtime.config)
    metrics.MAX_CONCURRENT.labels(metrics.CONTROLLER).set(WORKERS)
    runtime.tasks = [asyncio.create_task(runtime.queue.worker(_work)) for _ in range(WORKERS)]
    runtime.tasks.append(asyncio.create_task(_resync()))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    if runtime.client is not None:
        await runtime.client.close()


async def _work(key: tuple[str, str]) -> None:
    assert runtime.reconciler is not None
    metrics.ACTIVE_WORKERS.labels(metrics.CONTROLLER).inc()
    try:
        if not await runtime.reconciler.reconcile(key):
            runtime.queue.add_after(key, RETRY_DELAY)
    finally:
        metrics.ACTIVE_WORKERS.labels(metrics.CONTROLLER).dec()


async def _resync() -> None:
    """Level-triggered safety net: re-plan every Distillation now and then, events or not."""
    while True:
        await asyncio.sleep(runtime.config.resync_seconds)
        for key in list(runtime.cache.distillations):
            runtime.queue.add(key)


def _deleted(type_: str | None) -> bool:
    return type_ == "DELETED"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def distillation_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    key = runtime.cache.put_distillation(body, _deleted(type))
    if _deleted(type):
        if runtime.reconciler is not None:
            runtime.reconciler.forget(key)
        return
    runtime.queue.add(key)


def _child_event(kind: str) -> Callable[..., Awaitable[None]]:
    async def handler(type: str | None, body: kopf.Body, **_: Any) -> None:
        key = runtime.cache.put_child(kind, body, _deleted(type))
        if key is not None and key in runtime.cache.distillations:
            runtime.queue.add(key)
    handler.__name__ = f"{kind.lower()}_event"
    return handler


kopf.on.event("batch", "v1", "jobs", labels=CHILD_FILTER)(_child_event("Job"))
kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)(_child_event("Deployment"))
kopf.on.event("", "v1", "services", labels=CHILD_FILTER)(_child_event("Service"))
kopf.on.event("", "v1", "configmaps", labels=CHILD_FILTER)(_child_event("ConfigMap"))
kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_FILTER)(_child_event("PersistentVolumeClaim"))
kopf.on.event("", "v1", "serviceaccounts", labels=CHILD_FILTER)(_child_event("ServiceAccount"))
kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=CHILD_FILTER)(_child_event("Role"))
kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=CHILD_FILTER)(_child_event("RoleBinding"))


@kopf.on.event("", "v1", "pods", labels=CHILD_FILTER)
async def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    key = runtime.cache.put_pod(body, _deleted(type))
    if key is not None and key in runtime.cache.distillations:
        runtime.queue.add(key)


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    before = len(runtime.cache.nodes())
    runtime.cache.put_node(body, _deleted(type), runtime.config.gpu_resource)
    # New capacity can unblock Distillations waiting for a GPU node pool.
    if len(runtime.cache.nodes()) != before:
        for key, dist in runtime.cache.distillations.items():
            if (dist.get("status") or {}).get("phase") != "Succeeded":
                runtime.queue.add(key)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery operator")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only these namespaces (repeatable; default: all, or the config's list)")
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="kopf liveness endpoint URL")
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
    metrics.REGISTRY.register(metrics.DistillationCollector(runtime.cache.distillations))
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics.REGISTRY)
    namespaces = args.namespace or runtime.config.namespaces
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0
