"""`distillery operator` as the cluster tests run it: a subprocess they start, kill and restart."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distillery.workloads.environment import free_port
from tests.cluster.kube import REPO


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
        self.metrics_port = free_port()
        self.starts += 1
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"} | self.extra_env
        env["PYTHONPATH"] = str(REPO / "operator") + os.pathsep + env.get("PYTHONPATH", "")
        if self.config:
            env["DISTILLERY_CONFIG"] = str(self.config)
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distillery.cli", "operator", "--metrics-port", str(self.metrics_port),
             "--liveness", f"http://127.0.0.1:{free_port()}/healthz", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                self.metrics()
                return
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
