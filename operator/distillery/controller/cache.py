"""What the planner reads, held in kopf indexes, and the bookkeeping that decides which events wake a pass.

kopf runs every index handler over its watch's initial list before it invokes any other handler of any
resource. The event handlers, which alone wake reconciles, therefore start only after the Distillations,
their children, the stage pods and the nodes have all been listed: the sync barrier that an informer's
HasSynced gives a Go controller. A pass after a restart never plans from a half-listed cluster.

Children are indexed by the UID of their controlling Distillation, so a Distillation re-created under the
same name never sees, let alone adopts, the children of the one that went before it.
"""

import json
from collections.abc import Mapping
from typing import Any, Protocol

from distillery.api.crd import GROUP, KIND
from distillery.controller.observe import CONTAINER_CREATING, STUCK_REASONS, NodeView, workload_message
from distillery.resources.common import APPLIED_HASH_ANNOTATION, PARENT_LABEL, STAGE_LABEL
from distillery.resources.jobs import ATTEMPT_ANNOTATION, IGNORED_FAILURES_ANNOTATION

Key = tuple[str, str]
"""(namespace, Distillation name)."""

DISTILLATIONS, PODS, NODES, WORKLOADS = "distillations", "stage_pods", "nodes", "kueue_workloads"
KUEUE_WORKLOAD = ("kueue.x-k8s.io", "v1beta2", "workloads")
"""Kueue's Workloads: why a queued stage Job waits. Without Kueue installed kopf leaves this index empty."""
CHILD_KINDS: dict[str, tuple[str, str, str]] = {
    # kind -> (group, version, plural); the index of each is named after its plural.
    "Job": ("batch", "v1", "jobs"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
}


class Index(Protocol):
    """The part of `kopf.Index` this module reads: key -> the values every matching object returned."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def keys(self) -> Any: ...

    def values(self) -> Any: ...


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def controller_uid(body: Any) -> str | None:
    """The UID of the Distillation that controls this object, if one does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP):
            return str(ref.get("uid"))
    return None


def project(body: Any) -> dict[str, Any]:
    """Keep the fields the planner reads; drops managedFields and the rest of the bulk."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    projected = {
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {k: v for k, v in annotations.items() if k in (APPLIED_HASH_ANNOTATION, ATTEMPT_ANNOTATION)},
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": _plain(body.get("spec")),
        "status": _plain(body.get("status")),
    }
    if (meta.get("labels") or {}).get(STAGE_LABEL) == "progress":
        projected["data"] = _plain(body.get("data"))
    return projected


def pod_projection(body: Any) -> dict[str, Any]:
    """Pods matter for their stage, the Job that owns them, termination messages and whether they can be
    scheduled."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    statuses: list[dict[str, Any]] = []
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("message"):
            statuses.append({"state": {"terminated": {"message": terminated["message"]}}})
        elif waiting and waiting.get("reason") in STUCK_REASONS:
            statuses.append({"state": {"waiting": {"reason": waiting["reason"],
                                                   "message": str(waiting.get("message", ""))[:300]}},
                             "restartCount": int(cs.get("restartCount") or 0)})
        elif waiting and waiting.get("reason") == CONTAINER_CREATING:
            # Kept (without waking the planner) so a pass can ask the pod's Events why its volumes do not mount.
            statuses.append({"state": {"waiting": {"reason": CONTAINER_CREATING}}})
    conditions = [{"type": "PodScheduled", "reason": "Unschedulable", "message": c.get("message", ""),
                   "lastTransitionTime": c.get("lastTransitionTime")}
                  for c in status.get("conditions") or []
                  if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"]
    owners = [str(r.get("uid")) for r in meta.get("ownerReferences") or [] if r.get("controller")]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k == IGNORED_FAILURES_ANNOTATION}
    return {"metadata": {"name": meta.get("name"), "uid": meta.get("uid"),
                         "creationTimestamp": meta.get("creationTimestamp"), "labels": dict(meta.get("labels") or {}),
                         "annotations": annotations, "owners": owners},
            "status": {"containerStatuses": statuses, "conditions": conditions}}


def _relevant(projection: dict[str, Any]) -> dict[str, Any]:
    """A projection without the bookkeeping that changes on every write."""
    meta = {k: v for k, v in projection["metadata"].items() if k != "resourceVersion"}
    return {**projection, "metadata": meta}


def _pod_matters(projection: dict[str, Any] | None) -> bool:
    status = (projection or {}).get("status") or {}
    statuses = [cs for cs in status.get("containerStatuses") or []
                if (cs.get("state", {}).get("waiting") or {}).get("reason") != CONTAINER_CREATING]
    return bool(statuses or status.get("conditions") or ((projection or {}).get("metadata") or {}).get("annotations"))


def key_of(body: Any) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# Index handlers: what each object contributes, under which key. -------------------------------------------

def distillation_entry(body: Any) -> dict[Key, dict[str, Any]]:
    return {key_of(body): project(body)}


def child_entry(body: Any) -> dict[str, dict[str, Any]] | None:
    uid = controller_uid(body)
    return {uid: project(body)} if uid else None


def pod_entry(body: Any) -> dict[Key, dict[str, Any]] | None:
    meta = body.get("metadata") or {}
    parent = (meta.get("labels") or {}).get(PARENT_LABEL)
    return {(str(meta.get("namespace") or ""), str(parent)): pod_projection(body)} if parent else None


def _owning_job_uid(body: Any) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job" and ref.get("apiVersion") == "batch/v1":
            return str(ref.get("uid"))
    return None


def workload_entry(body: Any) -> dict[str, str] | None:
    """Kueue's message for the Job a Workload stands for, by that Job's UID (the Workload carries none of
    our labels, only its owner reference)."""
    uid = _owning_job_uid(body)
    return {uid: workload_message(_plain(body))} if uid else None


def node_entry(body: Any, gpu_resource: str) -> dict[str, NodeView]:
    return {str((body.get("metadata") or {}).get("name")): NodeView.of(_plain(body), gpu_resource)}


class ClusterCache:
    """Read access to the indexes for a pass, and which events are worth a pass.

    The indexes are handed over by the first event handler kopf calls, which it does only once every
    index is filled: until then `synced` is unset and nothing reconciles.
    """

    def __init__(self) -> None:
        self._indexes: Mapping[str, Index] | None = None
        # A fingerprint of the relevant part of each child and pod last seen (and whether the pod mattered),
        # by object UID: an event wakes its parent only when that part changed (most pod and status
        # updates change nothing the planner reads).
        self._seen: dict[str, tuple[int, bool]] = {}

    @property
    def synced(self) -> bool:
        return self._indexes is not None

    def attach(self, indexes: Mapping[str, Any]) -> None:
        if self._indexes is None:
            self._indexes = {name: indexes[name] for name in (DISTILLATIONS, PODS, NODES, WORKLOADS,
                                                              *child_indexes())}

    def _index(self, name: str) -> Index:
        assert self._indexes is not None, "read before kopf's indexes were filled"
        return self._indexes[name]

    def distillation(self, key: Key) -> dict[str, Any] | None:
        store = self._index(DISTILLATIONS).get(key)
        return next(iter(store), None) if store else None

    def keys(self) -> list[Key]:
        return list(self._index(DISTILLATIONS).keys()) if self.synced else []

    def distillations(self) -> list[dict[str, Any]]:
        return [next(iter(store)) for store in list(self._index(DISTILLATIONS).values()) if store]

    def children(self, uid: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for name in child_indexes():
            found.extend(self._index(name).get(uid) or ())
        return found

    def pods(self, key: Key) -> list[dict[str, Any]]:
        return list(self._index(PODS).get(key) or ())

    def queue_messages(self, job_uids: set[str]) -> dict[str, str]:
        index = self._index(WORKLOADS)
        return {uid: next(iter(index.get(uid) or ()), "") for uid in job_uids}

    def workload_changed(self, body: Any, deleted: bool) -> Key | None:
        """The Distillation whose Job this Workload admits, when Kueue's message for it changed."""
        job_uid = _owning_job_uid(body)
        if job_uid is None:
            return None
        uid = str((body.get("metadata") or {}).get("uid"))
        if not self._remember(uid, None if deleted else {"message": workload_message(_plain(body))}, False):
            return None
        for store in list(self._index("jobs").values()):
            for job in store:
                meta = job.get("metadata") or {}
                if meta.get("uid") == job_uid:
                    return str(meta.get("namespace") or ""), str((meta.get("labels") or {}).get(PARENT_LABEL))
        return None

    def nodes(self) -> list[NodeView]:
        return [view for store in list(self._index(NODES).values()) for view in store]

    def child_changed(self, body: Any, deleted: bool) -> Key | None:
        """The Distillation to wake for this child event, when something the planner reads changed."""
        meta = body.get("metadata") or {}
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        if controller_uid(body) is None or owner is None:
            return None
        changed = self._remember(str(meta.get("uid")), None if deleted else _relevant(project(body)), True)
        return (str(meta.get("namespace") or ""), str(owner.get("name"))) if changed else None

    def pod_changed(self, body: Any, deleted: bool) -> Key | None:
        """Pods matter when a termination message appears or scheduling fails (or stops failing)."""
        entry = pod_entry(body)
        if entry is None:
            return None
        projection = None if deleted else next(iter(entry.values()))
        uid = str((body.get("metadata") or {}).get("uid"))
        matters_before = self._seen.get(uid, (0, False))[1]
        changed = self._remember(uid, projection, _pod_matters(projection))
        return next(iter(entry)) if changed and (matters_before or _pod_matters(projection)) else None

    def node_changed(self, body: Any, deleted: bool, gpu_resource: str) -> bool:
        """Whether this node event changed what the capacity check reads (labels, allocatable GPUs)."""
        uid = str((body.get("metadata") or {}).get("uid"))
        view = None if deleted else NodeView.of(_plain(body), gpu_resource)
        return self._remember(uid, None if view is None else {"labels": view.labels, "gpus": view.allocatable_gpus},
                              False)

    def _remember(self, uid: str, relevant: dict[str, Any] | None, matters: bool) -> bool:
        """Store what this object looks like now; returns whether that differs from before."""
        before = self._seen.pop(uid, None)
        if relevant is None:
            return before is not None
        now = (hash(json.dumps(relevant, sort_keys=True, default=str)), matters)
        self._seen[uid] = now
        return now != before


def child_indexes() -> list[str]:
    return [plural for _, _, plural in CHILD_KINDS.values()]
