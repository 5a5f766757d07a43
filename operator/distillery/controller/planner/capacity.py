"""GPU capacity: whether the region's node pools can ever hold a stage's pods, and why a stage waits."""

from collections.abc import Mapping

from distillery.api.config import OperatorConfig
from distillery.api.spec import NamedTeacherSpec
from distillery.api.status import STAGE_CONDITION, Stage, StageState, seconds_between
from distillery.controller.observe import NodeView
from distillery.controller.planner.context import Pass
from distillery.resources.common import gpu_node_fits

UNSCHEDULABLE_GRACE_SECONDS = 15
GpuDemand = tuple[str | None, int, int]
"""(GPU type, GPUs per pod, pods)."""


def gpu_pool_fits(nodes: tuple[NodeView, ...], config: OperatorConfig, region: str, gpu_type: str | None,
                  gpus_per_pod: int, pods: int = 1, node_selector: Mapping[str, str] | None = None) -> bool:
    """Can the region's node pools ever hold these pods (by allocatable, not by what is free now)? Counts the
    nodes the rendered affinity and the Distillation's nodeSelector admit, however the cloud labels GPUs."""
    fitting = sum(1 for node in nodes if gpu_node_fits(config, node.labels, node.allocatable_gpus, region,
                                                         gpu_type, gpus_per_pod, node_selector))
    return fitting >= pods


def gpu_pool_fits_all(nodes: tuple[NodeView, ...], config: OperatorConfig, region: str, demands: list[GpuDemand],
                      node_selector: Mapping[str, str] | None = None) -> bool:
    """Can the region's node pools hold all these pods at once (several teachers started together)?

    First-fit decreasing over each node's allocatable GPUs: exact packing is NP-hard, and with at most 4
    teachers of a few replicas each, first-fit decreasing misses a packing only in contrived pools (and
    capacityCheck none turns the check off)."""
    free = [node.allocatable_gpus for node in nodes]
    pods = sorted(((gpu_type, gpus) for gpu_type, gpus, count in demands for _ in range(count)),
                  key=lambda pod: -pod[1])
    for gpu_type, gpus in pods:
        for i, node in enumerate(nodes):
            if free[i] >= gpus and gpu_node_fits(config, node.labels, free[i], region, gpu_type if gpus else None,
                                                 gpus, node_selector):
                free[i] -= gpus
                break
        else:
            return False
    return True


def wait_for_gpus(ctx: Pass, stage: Stage, gpu_type: str, gpus: int, pods: int = 1) -> bool:
    """True when the region cannot hold the stage, which then records why it waits."""
    if ctx.config.capacity_check == "none":
        return False
    if gpu_pool_fits(ctx.obs.nodes, ctx.config, ctx.spec.region, gpu_type if gpus else None, gpus, pods,
                     ctx.spec.scheduling.node_selector):
        return False
    what = f"{pods} node(s) with {gpus}x {gpu_type}" if gpus else f"{pods} node(s)"
    wait_for_capacity(ctx, stage, f"no node in region {ctx.spec.region} can hold {what}")
    return True


def wait_for_teachers_gpus(ctx: Pass, members: list[NamedTeacherSpec]) -> bool:
    """The served teachers start together: True when the region cannot hold them. A single teacher is checked
    for one replica (the check is whether it can ever run); several teachers for all their replicas at once,
    packed onto the nodes together."""
    if not ctx.spec.several_teachers:
        t = members[0]
        return wait_for_gpus(ctx, Stage.TEACHER, t.gpu_type, t.gpus)
    if ctx.config.capacity_check == "none":
        return False
    if gpu_pool_fits_all(ctx.obs.nodes, ctx.config, ctx.spec.region,
                         [(t.gpu_type, t.gpus, t.replicas) for t in members], ctx.spec.scheduling.node_selector):
        return False
    what = ", ".join(f"{t.name}: {t.replicas} pod(s) with {t.gpus}x {t.gpu_type}" for t in members)
    wait_for_capacity(ctx, Stage.TEACHER, f"the nodes in region {ctx.spec.region} cannot hold the teachers "
                                          f"together ({what})")
    return True


def wait_for_capacity(ctx: Pass, stage: Stage, why: str) -> None:
    message = (f"{why}; waiting for capacity (for node "
               f"pools that scale from zero, set the operator's capacityCheck to none)")
    if ctx.stage(stage).state != StageState.WAITING:
        ctx.event("NoMatchingGPUNodePool", message, warning=True)
    ctx.start(stage, StageState.WAITING, message)
    ctx.cond(STAGE_CONDITION[stage], False, "NoMatchingGPUNodePool", message)


def blocked(ctx: Pass, stage_label: str) -> str | None:
    """The scheduler's reason once a stage pod has waited past the grace period.

    Pods are briefly unschedulable in normal operation (a claim still binding); reporting
    those would add two status writes per stage for nothing. The periodic resync brings
    a longer wait into status."""
    entry = ctx.obs.unschedulable.get(stage_label)
    if entry is None:
        return None
    message, since = entry
    try:
        waited = seconds_between(since, ctx.now)
    except ValueError:
        return message
    return message if waited is None or waited >= UNSCHEDULABLE_GRACE_SECONDS else None
