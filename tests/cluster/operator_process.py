"""`distillery operator` as the cluster tests run it: a subprocess they start, kill and restart."""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distillery.devcluster.ports import free_port
from tests.cluster.kube import REPO

BIND_ATTEMPTS = 5
ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)


class OperatorProcess:
    """`distillery operator` as a real subprocess, restartable and killable like a pod."""

    def __init__(self, kubeconfig: Path, log_dir: Path, config: Path | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.config = config
        self.extra_env = env or {}
        self.extra_args = args or []
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self) -> None:
        """Start the operator; return once its metrics answer.

        Its liveness endpoint takes a port of its own choosing (port 0). The metrics port is found free here and
        may be taken before the operator binds it; the operator then exits saying so before it answers, and is
        started again on a new port."""
        self.starts += 1
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"} | self.extra_env
        env["PYTHONPATH"] = str(REPO / "operator") + os.pathsep + env.get("PYTHONPATH", "")
        if self.config:
            env["DISTILLERY_CONFIG"] = str(self.config)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.metrics_port = free_port()
            with open(self.log_dir / f"operator-{self.starts}.log", "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "distillery.cli", "operator", "--metrics-port", str(self.metrics_port),
                     "--liveness", "http://127.0.0.1:0/healthz", *self.extra_args],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            if self._metrics_answer():
                return
            if attempt == BIND_ATTEMPTS or not ADDRESS_IN_USE.search(self.log_of_start(self.starts)):
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")

    def _metrics_answer(self) -> bool:
        """True once the metrics endpoint answers, False if the operator exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.metrics()
                return True
            except OSError:
                time.sleep(0.2)
        raise AssertionError("operator metrics endpoint did not come up")

    def start_if_stopped(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def logs(self) -> str:
        return "\n".join(self.log_of_start(n) for n in range(1, self.starts + 1))

    def log_of_start(self, number: int) -> str:
        return (self.log_dir / f"operator-{number}.log").read_text(errors="replace")
