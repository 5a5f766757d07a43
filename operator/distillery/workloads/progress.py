"""How a stage pod tells the operator where it stands: live progress while it runs, a termination message
when it ends.

Live progress: each pod patches one key (`api.reports.progress_key`) of the Distillation's progress
ConfigMap with its stage's report (`api.reports`) as a small JSON object, from a background thread at most
every `interval` seconds, so neither the labeler's event loop nor the trainer's step loop ever waits on the
API server. Reporting is best effort: a pod
outside a cluster, or an API hiccup, never fails the workload.

The termination message (Kubernetes keeps the first 4096 bytes of TERMINATION_MESSAGE_PATH) carries the
final summary, so it stays small and compact JSON.
"""

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from urllib3.exceptions import HTTPError

from distillery.api.pipeline import POD_NAMESPACE_ENV, PROGRESS_CONFIGMAP_ENV, TERMINATION_MESSAGE_ENV
from distillery.api.reports import Report, progress_key

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
PROGRESS_REQUEST_TIMEOUT_S = 10
DEFAULT_KUBECONFIG = "~/.kube/config"

log = logging.getLogger("distillery.progress")

Snapshot = Callable[[], Report]


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(compact_json(value))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_termination_message(report: Report, path: str | None = None) -> bool:
    """Write `report` where Kubernetes reads the termination message; False when it cannot be written
    (outside a pod /dev/termination-log is usually not writable, and that is fine)."""
    target = Path(path or os.environ.get(TERMINATION_MESSAGE_ENV) or DEFAULT_TERMINATION_MESSAGE_PATH)
    summary = report.dump()
    text = compact_json(summary)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        # Kubernetes would cut it mid-JSON; say so in a message the operator can still parse.
        text = compact_json({"error": "summary over 4096 bytes", "keys": sorted(summary)})
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return False
    try:
        target.write_text(text)
    except OSError:
        return False
    return True


def _core_api() -> client.CoreV1Api:
    """A CoreV1Api on the pod's service account, or on $KUBECONFIG when run outside a cluster."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # The library reads $KUBECONFIG when it is imported; read it now.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG,
                                client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


class LiveProgress:
    """Publishes `snapshot()` under this pod's key from a daemon thread while the workload runs.

    `start` starts the thread; `stop` ends it and publishes the final snapshot (both also as a context
    manager). Without the progress environment (outside a cluster) it does nothing.
    """

    def __init__(self, stage: str, index: int, snapshot: Snapshot, interval: float = 10.0) -> None:
        self.key = progress_key(stage, index)
        self.snapshot = snapshot
        self.interval = interval
        self.configmap = os.environ.get(PROGRESS_CONFIGMAP_ENV)
        self.namespace = os.environ.get(POD_NAMESPACE_ENV)
        self._api: client.CoreV1Api | None = None
        self._sent: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.configmap and self.namespace)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"progress-{self.key}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Blocks for at most one request (call it off an event loop)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.publish()

    def __enter__(self) -> "LiveProgress":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.publish()
            self._stop.wait(self.interval)

    def publish(self) -> bool:
        """Patch this pod's key with the current snapshot if it changed; returns whether it was sent."""
        if not self.enabled:
            return False
        data = self.snapshot().dump()
        if data == self._sent:
            return False
        try:
            if self._api is None:
                self._api = _core_api()
            self._api.patch_namespaced_config_map(
                str(self.configmap), str(self.namespace), {"data": {self.key: json.dumps(data, sort_keys=True)}},
                _request_timeout=PROGRESS_REQUEST_TIMEOUT_S)
        except (ApiException, ConfigException, HTTPError, OSError) as err:
            if not self._warned:
                log.warning("live progress not reported (%s); the workload continues", err)
                self._warned = True
            return False
        self._sent = data
        return True
