"""Where the control-plane binaries live, and building them when they are missing."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
HELM_VERSION = os.environ.get("HELM_VERSION", "v3.22.0")
KUEUE_VERSION = os.environ.get("KUEUE_VERSION", "v0.17.0")
KARPENTER_VERSION = os.environ.get("KARPENTER_VERSION", "v1.15.0")

BUILD_SCRIPT = Path(__file__).with_name("build_binaries.sh")
ALL_TARGETS = ("etcd", "kubernetes", "kwok", "helm")
CLUSTER_TARGETS = ("etcd", "kubernetes", "kwok")
KUEUE_TARGETS = ("kueue",)
"""Built on first use only (`dev-cluster up --kueue`, the Kueue tests): the default set-up does not pay for it."""
KARPENTER_TARGETS = ("karpenter",)
"""Likewise, for `dev-cluster up --autoscaler` and the autoscaler tests."""


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    helm: Path
    kueue: Path
    kueue_crds: Path
    kueue_webhooks: Path
    karpenter: Path
    karpenter_crds: Path

    @classmethod
    def locate(cls) -> "Binaries":
        bin_dir = cache_dir() / "bin"
        k8s = bin_dir / f"kubernetes-{K8S_VERSION}"
        kwok = bin_dir / f"kwok-{KWOK_VERSION}"
        kueue = bin_dir / f"kueue-{KUEUE_VERSION}"
        karpenter = bin_dir / f"karpenter-{KARPENTER_VERSION}"
        return cls(
            etcd=bin_dir / f"etcd-{ETCD_VERSION}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=kwok / "kwok",
            kwok_stages=kwok / "stages",
            helm=bin_dir / f"helm-{HELM_VERSION}" / "helm",
            kueue=kueue / "kueue",
            kueue_crds=kueue / "crd",
            kueue_webhooks=kueue / "webhooks.yaml",
            karpenter=karpenter / "karpenter-kwok",
            karpenter_crds=karpenter / "crd",
        )

    def missing(self, targets: tuple[str, ...] = ALL_TARGETS) -> list[Path]:
        paths = {
            "etcd": [self.etcd],
            "kubernetes": [self.kube_apiserver, self.kube_controller_manager, self.kube_scheduler, self.kubectl],
            "kwok": [self.kwok, self.kwok_stages],
            "helm": [self.helm],
            "kueue": [self.kueue, self.kueue_crds, self.kueue_webhooks],
            "karpenter": [self.karpenter, self.karpenter_crds / "karpenter.kwok.sh_kwoknodeclasses.yaml"],
        }
        return [p for t in targets for p in paths[t] if not p.exists()]


def ensure_built(targets: tuple[str, ...] = ALL_TARGETS) -> Binaries:
    """Build whatever is missing; a cold build takes tens of minutes and prints progress."""
    binaries = Binaries.locate()
    if binaries.missing(targets):
        print(f"building control-plane binaries into {cache_dir() / 'bin'} (cached by version)", file=sys.stderr)
        env = os.environ | {
            "K8S_VERSION": K8S_VERSION,
            "ETCD_VERSION": ETCD_VERSION,
            "KWOK_VERSION": KWOK_VERSION,
            "HELM_VERSION": HELM_VERSION,
            "KUEUE_VERSION": KUEUE_VERSION,
            "KARPENTER_VERSION": KARPENTER_VERSION,
            "DISTILLERY_CACHE": str(cache_dir()),
        }
        subprocess.run(["bash", str(BUILD_SCRIPT), *targets], env=env, check=True)
        binaries = Binaries.locate()
    still_missing = binaries.missing(targets)
    if still_missing:
        raise RuntimeError(f"binaries missing after build: {', '.join(map(str, still_missing))}")
    return binaries
