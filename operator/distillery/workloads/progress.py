"""Progress files and the termination message: how a stage pod tells the operator where it stands.

The operator reads `progress-*.json` from the workspace while the stage runs and
the pod's termination message (Kubernetes keeps the first 4096 bytes of
TERMINATION_MESSAGE_PATH) when it ends, so both stay small and compact JSON.
"""

import asyncio
import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillery.workloads.live_progress import LiveProgress

TERMINATION_MESSAGE_ENV = "TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass
class Counters:
    rows_done: int = 0
    rows_ok: int = 0
    rows_rejected: int = 0
    rows_total: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


def write_termination_message(summary: dict[str, Any], path: str | None = None) -> bool:
    """Write `summary` where Kubernetes reads the termination message; False when it cannot be written
    (outside a pod /dev/termination-log is usually not writable, and that is fine)."""
    target = Path(path or os.environ.get(TERMINATION_MESSAGE_ENV) or DEFAULT_TERMINATION_MESSAGE_PATH)
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


async def report_periodically(path: Path, counters: Counters, interval_s: float,
                              live: LiveProgress | None = None) -> None:
    """Rewrite the progress file every `interval_s` until cancelled, then once more with the final counts.

    With `live`, the counts also go to the operator (which rate-limits itself)."""
    try:
        while True:
            await asyncio.to_thread(write_json_atomic, path, counters.as_dict())
            if live is not None:
                await live.publish(counters.as_dict())
            await asyncio.sleep(interval_s)
    finally:
        write_json_atomic(path, counters.as_dict())
