"""Live progress from a stage pod to the operator, through the Distillation's progress ConfigMap.

Each pod patches one key (`<stage>-<index>`) with a small JSON object, at most
every `interval` seconds; the operator folds the keys into status.progress.
Reporting is best effort: a pod outside a cluster, or an API hiccup, never
fails the workload.
"""

import asyncio
import json
import logging
import os
import time
from typing import Any

from distillery.kube import ApiError, Credentials, KubeClient

CONFIGMAP_ENV = "DISTILLERY_PROGRESS_CONFIGMAP"
NAMESPACE_ENV = "POD_NAMESPACE"

log = logging.getLogger("distillery.progress")


class LiveProgress:
    def __init__(self, stage: str, index: int, interval: float = 10.0) -> None:
        self.key = f"{stage}-{index:05d}"
        self.interval = interval
        self.configmap = os.environ.get(CONFIGMAP_ENV)
        self.namespace = os.environ.get(NAMESPACE_ENV)
        self._last = 0.0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.configmap and self.namespace)

    def due(self, force: bool = False) -> bool:
        return self.enabled and (force or time.monotonic() - self._last >= self.interval)

    async def publish(self, data: dict[str, Any], force: bool = False) -> bool:
        """Patch this pod's key if the interval has passed (or force); returns whether it was sent."""
        if not self.due(force):
            return False
        self._last = time.monotonic()
        patch = {"data": {self.key: json.dumps(data, sort_keys=True)}}
        try:
            async with KubeClient(Credentials.from_environment(), timeout=10) as client:
                await client.merge_patch("ConfigMap", str(self.configmap), self.namespace, patch)
            return True
        except (TimeoutError, ApiError, OSError, KeyError, StopIteration) as e:
            if not self._warned:
                log.warning("live progress not reported (%s); the workload continues", e)
                self._warned = True
            return False

    def publish_sync(self, data: dict[str, Any], force: bool = False) -> bool:
        """For synchronous workloads (the trainer loop)."""
        if not self.due(force):
            return False
        return asyncio.run(self.publish(data, force=True))
