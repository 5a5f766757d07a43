"""In-memory view of the cluster, fed by kopf watch events.

Reconciles read from here instead of the API server, so one pass costs no
reads; the watch streams keep it current (level-triggered, like an informer).
"""

from collections import defaultdict
from typing import Any

from distillery.controller.observe import NodeView
from distillery.resources.common import PARENT_LABEL, STAGE_LABEL

Key = tuple[str, str]
"""(namespace, Distillation name)."""


def project(body: Any) -> dict[str, Any]:
    """Keep the fields the planner reads; drops managedFields and the rest of the bulk."""
    meta = body.get("metadata") or {}
    projected = {
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": dict(meta.get("labels") or {}),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": _plain(body.get("spec")),
        "status": _plain(body.get("status")),
    }
    if (meta.get("labels") or {}).get(STAGE_LABEL) == "progress":
        projected["data"] = _plain(body.get("data"))
    return projected


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _relevant(projection: dict[str, Any]) -> dict[str, Any]:
    """A projection without the bookkeeping that changes on every write."""
    meta = {k: v for k, v in projection["metadata"].items() if k != "resourceVersion"}
    return {**projection, "metadata": meta}


def _pod_projection(body: Any) -> dict[str, Any]:
    """Pods matter only for their stage label, termination messages and whether they can be scheduled."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    statuses = []
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated and terminated.get("message"):
            statuses.append({"state": {"terminated": {"message": terminated["message"]}}})
    conditions = [{"type": "PodScheduled", "reason": "Unschedulable", "message": c.get("message", ""),
                   "lastTransitionTime": c.get("lastTransitionTime")}
                  for c in status.get("conditions") or []
                  if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"]
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
            "status": {"containerStatuses": statuses, "conditions": conditions}}


def _pod_matters(projection: dict[str, Any] | None) -> bool:
    status = (projection or {}).get("status") or {}
    return bool(status.get("containerStatuses") or status.get("conditions"))


class ClusterCache:
    def __init__(self) -> None:
        self.distillations: dict[Key, dict[str, Any]] = {}
        self._children: dict[Key, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self._pods: dict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._nodes: dict[str, NodeView] = {}

    def parent_of(self, body: Any) -> Key | None:
        meta = body.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(PARENT_LABEL)
        return (str(meta.get("namespace") or ""), str(parent)) if parent else None

    def put_distillation(self, body: Any, deleted: bool) -> Key:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if deleted:
            self.distillations.pop(key, None)
            self._children.pop(key, None)
            self._pods.pop(key, None)
        else:
            self.distillations[key] = project(body)
        return key

    def put_child(self, kind: str, body: Any, deleted: bool) -> Key | None:
        """Store a child; returns its parent's key only when something the planner reads changed."""
        key = self.parent_of(body)
        if key is None:
            return None
        name = str((body.get("metadata") or {}).get("name") or "")
        children = self._children[key]
        if deleted:
            return key if children.pop((kind, name), None) is not None else None
        new = project(body) | {"kind": kind}
        old = children.get((kind, name))
        children[(kind, name)] = new
        return key if old is None or _relevant(old) != _relevant(new) else None

    def put_pod(self, body: Any, deleted: bool) -> Key | None:
        """Pods matter when a termination message appears or scheduling fails (or stops failing),
        so most pod updates wake nothing."""
        key = self.parent_of(body)
        if key is None:
            return None
        name = str((body.get("metadata") or {}).get("name") or "")
        if deleted:
            return key if _pod_matters(self._pods[key].pop(name, None)) else None
        new = _pod_projection(body)
        old = self._pods[key].get(name)
        self._pods[key][name] = new
        return key if new != old and (_pod_matters(new) or _pod_matters(old)) else None

    def put_node(self, body: Any, deleted: bool, gpu_resource: str) -> None:
        name = str((body.get("metadata") or {}).get("name") or "")
        if deleted:
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = NodeView.of(_plain(body), gpu_resource)

    def children(self, key: Key) -> list[dict[str, Any]]:
        return list(self._children.get(key, {}).values())

    def pods(self, key: Key) -> list[dict[str, Any]]:
        return list(self._pods.get(key, {}).values())

    def nodes(self) -> list[NodeView]:
        return list(self._nodes.values())
