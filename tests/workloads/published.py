"""What LiveProgress patched into the progress ConfigMap, recorded for workload tests."""

import threading
from collections.abc import Callable
from typing import Any


class PublishedProgress:
    """Stands for the API server under LiveProgress: records each key and value it patches into the progress
    ConfigMap, in order."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def patch_namespaced_config_map(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        with self.changed:
            self.patches.extend(body["data"].items())
            self.changed.notify_all()

    def wait_for(self, found: Callable[[list[tuple[str, str]]], bool]) -> bool:
        """Wait until the patches satisfy `found` (called from a thread: the labeler's runs on another); no
        deadline of its own, pytest's timeout ends a run that never gets there."""
        with self.changed:
            return self.changed.wait_for(lambda: found(self.patches))
