"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
as processes on loopback, with simulated GPU node pools."""

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from distillery.devcluster import karpenter, kueue
from distillery.devcluster.binaries import (
    CLUSTER_TARGETS,
    KARPENTER_TARGETS,
    KUEUE_TARGETS,
    Binaries,
    cache_dir,
    ensure_built,
)
from distillery.devcluster.nodepools import DEFAULT_NODEPOOLS, POOL_LABEL, NodePools, node_manifests
from distillery.devcluster.pki import Pki
from distillery.devcluster.ports import free_port

STAGES_DIR = Path(__file__).with_name("stages")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
OPTIONAL_COMPONENTS = ("kueue", "karpenter")
LOCAL_WORKLOADS_DIR = "local-workloads"
"""Under a cluster's folder: the volumes of the pods the local kubelet runs (pvc/<claim>/ for pvc:// models)."""
"""Started on request (`up --kueue`); stopped before the control plane they depend on."""
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "kwok-volume", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kwok.x-k8s.io/volume",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}
# Binds ReadWriteOnce claims only, like the managed clouds' default disk classes (stages/volume-pvc-provision.yaml).
DISK_STORAGE_CLASS = {**STORAGE_CLASS, "metadata": {"name": "kwok-disk"}}
BIND_ATTEMPTS = 5
"""Starts of one component, each on fresh ports, before a port found taken each time fails `up`."""
ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE", re.IGNORECASE)



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); a finished child of ours must not count as running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _listens_on(pid: int, ports: set[int]) -> bool:
    """Whether the process (or a process under it: Kueue runs under unshare) listens on every one of the ports."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    found: set[int] = set()
    for member in tree:
        with contextlib.suppress(psutil.Error):
            found |= {c.laddr.port for c in member.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return ports <= found


def _log(msg: str) -> None:
    print(f"[dev-cluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class State:
    ports: dict[str, int]
    pids: dict[str, int]

    @classmethod
    def load(cls, path: Path) -> "State | None":
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(ports=data["ports"], pids=data["pids"])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"ports": self.ports, "pids": self.pids}, indent=2))


class DevCluster:
    """One named local cluster under ~/.cache/distillery/clusters/<name>."""

    def __init__(self, name: str = "dev", nodepools: Path = DEFAULT_NODEPOOLS) -> None:
        self.name = name
        self.dir = cache_dir() / "clusters" / name
        self.nodepools = nodepools
        self.pki = Pki(self.dir / "pki")
        self.state_file = self.dir / "state.json"
        self.logs = self.dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def state(self) -> State | None:
        return State.load(self.state_file)

    def running(self) -> dict[str, bool]:
        state = self.state()
        started = [c for c in OPTIONAL_COMPONENTS if state and c in state.pids]
        return {c: bool(state and c in state.pids and _alive(state.pids[c])) for c in (*COMPONENTS, *started)}

    def api_url(self) -> str:
        state = self.state()
        if state is None:
            raise RuntimeError(f"cluster {self.name!r} is not up")
        return f"https://127.0.0.1:{state.ports['apiserver']}"

    def ready(self) -> bool:
        try:
            return self.api_get("/readyz") == "ok"
        except OSError:
            return False

    def up(self, timeout: float = 120, with_kueue: bool = False, with_autoscaler: bool = False) -> Path:
        """Start whatever is not running; return the kubeconfig path. Idempotent."""
        binaries = ensure_built(CLUSTER_TARGETS)
        if all(self.running().values()) and self.ready():
            self._create_nodes()
            self._wait(self._nodes_ready, timeout, "nodes Ready")
            if with_kueue:
                self.start_kueue(timeout)
            if with_autoscaler:
                self.start_karpenter(timeout)
            _log(f"already up; kubeconfig: {self.kubeconfig}")
            return self.kubeconfig
        started = time.monotonic()
        self.down(quiet=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.pki.exists():
            self.pki.create()
        state = State(ports={}, pids={})
        ports = state.ports
        self._start_listening(state, "etcd", ("etcd", "etcd_peer"), lambda: self._etcd_args(binaries, ports), timeout)

        def apiserver() -> list[str]:
            self._write_kubeconfig(ports["apiserver"])
            return self._apiserver_args(binaries, ports)

        self._start_listening(state, "kube-apiserver", ("apiserver",), apiserver, timeout)
        self._wait(lambda: self.ready(), timeout, "kube-apiserver /readyz")
        _log(f"kube-apiserver ready after {time.monotonic() - started:.1f}s")
        self._start_listening(state, "kube-controller-manager", ("kcm",), lambda: self._kcm_args(binaries, ports),
                              timeout)
        self._start_listening(state, "kube-scheduler", ("scheduler",), lambda: self._scheduler_args(binaries, ports),
                              timeout)
        state.pids["kwok"] = self._spawn("kwok", self._kwok_args(binaries, ports))
        state.save(self.state_file)
        self._create_nodes()
        self._wait(self._nodes_ready, timeout, "nodes Ready")
        self._wait(self._default_service_account, timeout, "default ServiceAccount")
        if with_kueue:
            self.start_kueue(timeout)
        if with_autoscaler:
            self.start_karpenter(timeout)
        _log(f"up in {time.monotonic() - started:.1f}s; kubeconfig: {self.kubeconfig}")
        return self.kubeconfig

    def start_kueue(self, timeout: float = 120) -> None:
        """Kueue's manager with its CRDs, webhooks and the westus3 ClusterQueue (see devcluster/kueue.py).
        Idempotent; builds Kueue on first use."""
        binaries = ensure_built(KUEUE_TARGETS)
        state = self.state()
        if state is None:
            raise RuntimeError(f"cluster {self.name!r} is not up")
        pools = NodePools.load(self.nodepools)
        if "kueue" in state.pids and _alive(state.pids["kueue"]):
            self._apply(*kueue.queue_objects(pools))
            return
        started = time.monotonic()
        cert_dir = self.dir / "kueue-certs"
        etc = self.dir / "kueue-etc"
        cert, key = self.pki.serving_certificate("kueue-webhook")
        for directory in (cert_dir, etc / kueue.METRICS_CERT_DIR):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "tls.crt").write_bytes(cert)
            (directory / "tls.key").write_bytes(key)
            (directory / "tls.key").chmod(0o600)
        ca = self.pki.ca_crt.read_bytes()

        def manager() -> list[str]:
            # The CRDs' conversion webhooks name the webhook port: registered again for each port tried.
            crds = kueue.crds(binaries.kueue_crds, f"https://127.0.0.1:{state.ports['kueue_webhook']}", ca)
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kueue.NAMESPACE}}
            self._apply(namespace, *crds)
            self.wait_established(*[c["metadata"]["name"] for c in crds], timeout=timeout)
            config = self.dir / "kueue-config.yaml"
            config.write_text(yaml.safe_dump(kueue.configuration(state.ports["kueue_webhook"],
                                                                 state.ports["kueue_health"], cert_dir)))
            return [*kueue.with_etc_overlay(etc), str(binaries.kueue), f"--config={config}",
                    # The on-demand visibility API is an aggregated API server with certificates of its own under
                    # /visibility; nothing here reads pending workloads through it.
                    "--feature-gates=VisibilityOnDemand=false"]

        self._start_listening(state, "kueue", ("kueue_webhook", "kueue_health"), manager, timeout,
                              {"KUBECONFIG": str(self.kubeconfig)})
        base = f"https://127.0.0.1:{state.ports['kueue_webhook']}"
        self._wait(lambda: self._healthy(state.ports["kueue_health"]), timeout, "Kueue /readyz")
        self._apply(*kueue.webhook_configurations(binaries.kueue_webhooks.read_text(), base, ca))
        # Kueue's own webhooks admit these: the first apply that passes proves the apiserver reaches them.
        self._wait(lambda: self._apply(*kueue.queue_objects(pools), check=False), timeout,
                   "Kueue's webhooks to admit the ClusterQueue")
        _log(f"kueue up in {time.monotonic() - started:.1f}s: ClusterQueue {kueue.CLUSTER_QUEUE} with "
             f"{kueue.GPU_QUOTA} H100s in {kueue.REGION}")

    def start_karpenter(self, timeout: float = 120) -> None:
        """Karpenter (kwok provider) with NodePools for westus3 H100 and eastus2 A100 that start at zero nodes:
        the profile's static GPU nodes go, its CPU nodes stay. Idempotent; builds Karpenter on first use."""
        binaries = ensure_built(KARPENTER_TARGETS)
        state = self.state()
        if state is None:
            raise RuntimeError(f"cluster {self.name!r} is not up")
        if not ("karpenter" in state.pids and _alive(state.pids["karpenter"])):
            started = time.monotonic()
            crds = [yaml.safe_load(p.read_text()) for p in sorted(binaries.karpenter_crds.glob("*.yaml"))]
            self._apply(*crds)
            self.wait_established(*[c["metadata"]["name"] for c in crds], timeout=timeout)
            types = self.dir / "karpenter-instance-types.json"
            types.write_text(json.dumps(karpenter.instance_types()))
            env = {"KUBECONFIG": str(self.kubeconfig), "INSTANCE_TYPES_FILE_PATH": str(types),
                   "DISABLE_LEADER_ELECTION": "true", "SYSTEM_NAMESPACE": "kube-system",
                   # Decide on pending pods after 1 s of quiet, at most 3 s: the defaults batch for 10 s.
                   "BATCH_IDLE_DURATION": "1s", "BATCH_MAX_DURATION": "3s"}

            def controller() -> list[str]:
                env.update(METRICS_PORT=str(state.ports["karpenter_metrics"]),
                           HEALTH_PROBE_PORT=str(state.ports["karpenter_health"]))
                return [str(binaries.karpenter)]

            self._start_listening(state, "karpenter", ("karpenter_metrics", "karpenter_health"), controller,
                                  timeout, env)
            self._wait(lambda: self._healthy(state.ports["karpenter_health"]), timeout, "Karpenter /readyz")
            _log(f"karpenter up in {time.monotonic() - started:.1f}s")
        self._apply(karpenter.node_class(), *karpenter.node_pools())
        self.kubectl("patch", "kwoknodeclass", karpenter.NODE_CLASS, "--subresource=status", "--type=merge",
                     "-p", json.dumps(karpenter.node_class_ready()))
        self._create_nodes()

    def stop_karpenter(self, timeout: float = 120) -> None:
        """Remove the NodePools (Karpenter deletes its nodes), stop Karpenter, bring back the static GPU nodes."""
        state = self.state()
        if state is None or "karpenter" not in state.pids:
            return
        self.kubectl("delete", "nodepools.karpenter.sh", "--all", f"--timeout={int(timeout)}s", check=False)
        self._wait(lambda: not self.kubectl("get", "nodeclaims.karpenter.sh", "-o", "name",
                                            check=False).stdout.strip(), timeout, "Karpenter's nodes to go")
        self._stop(state.pids.pop("karpenter"))
        state.save(self.state_file)
        self._create_nodes()
        self._wait(self._nodes_ready, timeout, "nodes Ready")

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Until every named CRD is served. Not `kubectl wait --for=condition=Established`: it fails at once, instead
        of waiting, when it reads the CRD before the API server has written any condition into its status."""
        def established() -> bool:
            result = self.kubectl("get", *[f"crd/{name}" for name in crds], "-o", "json", check=False)
            if result.returncode != 0:
                return False
            found = json.loads(result.stdout)
            items = found.get("items", [found])
            return len(items) == len(crds) and all(
                any(c.get("type") == "Established" and c.get("status") == "True"
                    for c in (item.get("status") or {}).get("conditions") or []) for item in items)

        self._wait(established, timeout, f"CRDs {', '.join(crds)} established")

    def _apply(self, *manifests: dict[str, Any], check: bool = True) -> bool:
        result = self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=distillery-dev-cluster",
                              "-f", "-", input=yaml.safe_dump_all(manifests), check=check)
        return result.returncode == 0

    @staticmethod
    def _healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def use_nodepools(self, nodepools: Path, timeout: float = 120) -> None:
        """Swap the simulated nodes for another profile's without restarting the control plane."""
        self.nodepools = nodepools
        self._create_nodes()
        self._wait(self._nodes_ready, timeout, "nodes Ready")

    def down(self, quiet: bool = False) -> None:
        """Stop every component and delete the cluster's data (PKI is kept)."""
        state = self.state()
        if state:
            for name in (*OPTIONAL_COMPONENTS, *reversed(COMPONENTS)):
                pid = state.pids.get(name)
                if pid and _alive(pid):
                    self._stop(pid)
                    if not quiet:
                        _log(f"stopped {name} (pid {pid})")
            self.state_file.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Binaries.locate().kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check,
        )

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.dir, env=os.environ | env if env else None,
        )
        log.close()
        return proc.pid

    def _start_listening(self, state: State, name: str, ports: tuple[str, ...], command: Callable[[], list[str]],
                         timeout: float, env: dict[str, str] | None = None) -> None:
        """Start `name` on fresh ports, recorded in `state` under `ports`, and return once it listens on all of them.

        These binaries take a port number and cannot report one chosen for them (port 0), so the port is found
        free first and may be taken by another process before the component binds it: a start that exits saying
        the address is in use is retried on new ports. `command` writes whatever else names the ports and returns
        the argv; it runs once per start."""
        log = self.logs / f"{name}.log"
        for attempt in range(1, BIND_ATTEMPTS + 1):
            for port in ports:
                state.ports[port] = free_port()
            seen = log.stat().st_size if log.exists() else 0
            pid = state.pids[name] = self._spawn(name, command(), env)
            state.save(self.state_file)
            wanted = {state.ports[port] for port in ports}
            try:
                self._wait(functools.partial(_listens_on, pid, wanted), timeout,
                           f"{name} to listen on {sorted(wanted)}")
                return
            except RuntimeError:
                with open(log, "rb") as f:
                    f.seek(seen)
                    said = f.read().decode(errors="replace")
                if _alive(pid) or attempt == BIND_ATTEMPTS or not ADDRESS_IN_USE.search(said):
                    raise
            self._stop(state.pids.pop(name))
            _log(f"{name}: a port was taken before it could bind it; starting it on new ports")

    @staticmethod
    def _stop(pid: int, grace: float = 10) -> None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            while _alive(pid):
                time.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def _wait(self, check: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            dead = [c for c, ok in self.running().items() if not ok and c in (self.state() or State({}, {})).pids]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}; see {self.logs}")
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}; see {self.logs}")

    def api_get(self, path: str) -> str:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        req = urllib.request.Request(self.api_url() + path, headers={"Authorization": f"Bearer {self.pki.admin_token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return str(resp.read().decode())

    def _write_kubeconfig(self, port: int) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {
                "server": f"https://127.0.0.1:{port}", "certificate-authority": str(self.pki.ca_crt)}}],
            "users": [{"name": "admin", "user": {"token": self.pki.admin_token}}],
            "contexts": [{"name": f"distillery-{self.name}", "context": {"cluster": self.name, "user": "admin"}}],
            "current-context": f"distillery-{self.name}",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _etcd_args(self, b: Binaries, p: dict[str, int]) -> list[str]:
        return [
            str(b.etcd), f"--name={self.name}", f"--data-dir={self.dir / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-cluster={self.name}=http://127.0.0.1:{p['etcd_peer']}",
            "--listen-metrics-urls=", "--unsafe-no-fsync", "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_args(self, b: Binaries, p: dict[str, int]) -> list[str]:
        return [
            str(b.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            # Any non-loopback address: without a default route the apiserver refuses to pick one,
            # and with the endpoint reconciler off nothing is ever sent to it.
            "--advertise-address=10.0.0.1",
            f"--tls-cert-file={self.pki.apiserver_crt}", f"--tls-private-key-file={self.pki.apiserver_key}",
            f"--client-ca-file={self.pki.ca_crt}", f"--token-auth-file={self.pki.tokens_csv}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{p['apiserver']}",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", f"--cert-dir={self.dir / 'apiserver-certs'}",
            "--endpoint-reconciler-type=none", "--profiling=false",
            # The benchmark applies hundreds of objects at once from one identity.
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
        ]

    def _component_kubeconfig_args(self) -> list[str]:
        k = str(self.kubeconfig)
        return [f"--kubeconfig={k}", f"--authentication-kubeconfig={k}", f"--authorization-kubeconfig={k}"]

    def _kcm_args(self, b: Binaries, p: dict[str, int]) -> list[str]:
        return [
            str(b.kube_controller_manager), *self._component_kubeconfig_args(),
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={p['kcm']}",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_crt}",
            "--use-service-account-credentials=false",
            "--concurrent-job-syncs=20", "--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20",
            "--concurrent-gc-syncs=40", "--kube-api-qps=200", "--kube-api-burst=400",
        ]

    def _scheduler_args(self, b: Binaries, p: dict[str, int]) -> list[str]:
        return [
            str(b.kube_scheduler), *self._component_kubeconfig_args(),
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}",
            "--kube-api-qps=200", "--kube-api-burst=400",
        ]

    def _kwok_args(self, b: Binaries, p: dict[str, int]) -> list[str]:
        stages = b.kwok_stages
        files = [
            Path(__file__).with_name("kwok-config.yaml"),
            stages / "node" / "fast" / "node-initialize.yaml",
            stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            stages / "pod" / "fast" / "pod-ready.yaml",
            stages / "pod" / "fast" / "pod-delete.yaml",
            stages / "pod" / "chaos" / "pod-container-running-failed.yaml",
            STAGES_DIR / "pod-complete.yaml",
            STAGES_DIR / "pod-fail-stage.yaml",
            STAGES_DIR / "pod-waiting-stage.yaml",
            *[STAGES_DIR / f"volume-{f}" for f in ("pvc-provision.yaml", "pv-bind.yaml", "pvc-delete.yaml",
                                                   "pv-delete.yaml")],
        ]
        return [
            str(b.kwok), f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", f"--cidr={POD_CIDR}", "--node-ip=10.0.0.1", "--v=WARN",
            *[f"--config={f}" for f in files],
        ]

    def _create_nodes(self) -> None:
        """Make the simulated nodes exactly the node-pool file's: apply its nodes, delete other pools' nodes."""
        pools = NodePools.load(self.nodepools)
        state = self.state()
        if state is not None and "karpenter" in state.pids:
            # Karpenter's NodePools stand in for the GPU pools, from zero nodes.
            pools = NodePools(pools=[p for p in pools.pools if not p.gpus])
        nodes = node_manifests(pools)
        # Our volume stages bind claims of these classes, so workspaces bind like on a real cluster.
        doc = yaml.safe_dump_all([STORAGE_CLASS, DISK_STORAGE_CLASS, *nodes])
        self.kubectl("apply", "--server-side", "--field-manager=distillery-dev-cluster", "-f", "-", input=doc)
        wanted = {n["metadata"]["name"] for n in nodes}
        existing = self.kubectl("get", "nodes", "-l", POOL_LABEL, "-o", "name").stdout.split()
        stale = [n for n in existing if n.removeprefix("node/") not in wanted]
        if stale:
            self.kubectl("delete", "--wait=false", *stale)
        _log(f"{len(nodes)} nodes in {len(pools.pools)} pools from {self.nodepools.name}"
             + (f"; removed {len(stale)} nodes of other pools" if stale else ""))

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get", "nodes", "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            check=False,
        ).stdout.split()
        return bool(out) and all(s == "True" for s in out)

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

