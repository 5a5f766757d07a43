"""One reconcile pass: read the cache, plan, apply the actions, write status once if it changed."""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from distillery.api.config import OperatorConfig
from distillery.api.crd import GROUP, KIND, VERSION
from distillery.api.modelref import PVC_SCHEME
from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, format_time
from distillery.controller import metrics
from distillery.controller.cache import ClusterCache, Key, controller_uid
from distillery.controller.conditions import set_condition
from distillery.controller.kube import ApiError, KubeClient
from distillery.controller.observe import Observed, creating_too_long, mount_failure, observe
from distillery.controller.planner import Action, Apply, Create, Delete, Event, Patch, plan
from distillery.resources.common import Owner

log = logging.getLogger("distillery.reconciler")

def _action_event(action: Action) -> Event:
    kind, name = _target(action)
    if isinstance(action, Create):
        return Event("Normal", "Created", f"Created {kind} {name}")
    if isinstance(action, Apply):
        return Event("Normal", "Updated", f"Updated {kind} {name}")
    return Event("Normal", "Deleted", f"Deleted {kind} {name}")


@dataclass(frozen=True)
class Written:
    """Our last status write: the resourceVersion it gave the object, and the versions the object had
    before it (back to the first of our writes the cache has not shown yet)."""

    after: str
    stale: frozenset[str]
    status: dict[str, Any]


class ChildRejected(Exception):
    """The API server refused a child for a reason it will give again until someone acts."""

    def __init__(self, kind: str, name: str, error: ApiError) -> None:
        self.kind, self.name, self.error = kind, name, error
        super().__init__(f"{kind} {name}: {error.status} {error.reason}: {error.message}")


FIELD_MANAGER = "distillery-operator"
"""The one field manager of every server-side apply the operator makes."""
_VERB = {Create: "create", Delete: "delete", Patch: "patch", Apply: "apply"}


def _target(action: Action) -> tuple[str, str]:
    if isinstance(action, Create | Apply):
        return action.manifest["kind"], action.manifest["metadata"]["name"]
    return action.kind, action.name


class Reconciler:
    def __init__(self, client: KubeClient, cache: ClusterCache, config: OperatorConfig) -> None:
        self.client = client
        self.cache = cache
        self.config = config
        # Our own last status write per Distillation: a child event can arrive before the watch delivers
        # that write back, and planning from the stale copy would write twice. resourceVersions are opaque
        # (equality only, no order), so the cache is stale exactly while it still shows the version we wrote over.
        self._written: dict[Key, Written] = {}
        # The last rejection reported per Distillation, so a retry does not post the same Warning again.
        self._rejected: dict[Key, str] = {}

    def forget(self, key: Key) -> None:
        self._written.pop(key, None)
        self._rejected.pop(key, None)

    async def reconcile(self, key: Key) -> bool:
        """Returns False when the pass hit an error and should be retried."""
        body = self.cache.distillation(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return True
        started = time.monotonic()
        ok = True
        try:
            await self._reconcile(key, body)
        except Exception as e:  # the pass is retried with backoff whatever broke it; the operator goes on
            ok = False
            metrics.RECONCILE_ERRORS.labels(metrics.CONTROLLER).inc()
            # One line per failure; the traceback only for what is not an answer from the API server.
            log.warning("reconcile %s/%s failed: %s: %s", key[0], key[1], type(e).__name__, e,
                        exc_info=not isinstance(e, ApiError | ChildRejected) and log.isEnabledFor(logging.DEBUG))
        finally:
            metrics.RECONCILE_TIME.labels(metrics.CONTROLLER).observe(time.monotonic() - started)
            metrics.RECONCILE_TOTAL.labels(metrics.CONTROLLER, "success" if ok else "error").inc()
        return ok

    async def _mount_failures(self, namespace: str, pods: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        """Why pods wait in ContainerCreating, from their Events: read only for pods waiting past a grace period,
        one field-selected list each, so the operator watches no Events (there are many, cluster-wide)."""
        found: dict[str, tuple[str, str]] = {}
        for pod in creating_too_long(pods, datetime.now(UTC)):
            meta = pod["metadata"]
            try:
                events = await self.client.list("Event", namespace, field_selector=f"involvedObject.uid={meta['uid']}")
            except ApiError as e:
                log.debug("events of pod %s/%s not read: %s", namespace, meta.get("name"), e)
                continue
            failure = mount_failure(events)
            if failure:
                found[str(meta["name"])] = failure
        return found

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> None:
        namespace, name = key
        meta = body["metadata"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        generation = int(meta.get("generation") or 0)
        status_raw, stale = self._status_to_plan_from(key, body)
        status = DistillationStatus.model_validate(status_raw)
        try:
            spec = DistillationSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            # The CRD schema admits it but the models do not (an older CRD, say): say so, do not crash.
            await self._invalid_spec(key, generation, status_raw, status, stale, e)
            return
        observed = await self._observe(key, owner, spec)
        result = plan(owner, generation, spec, status, observed, datetime.now(UTC), self.config)
        events = list(result.events)
        # Children of one pass are independent of each other (the planner orders stages across passes).
        outcomes = await asyncio.gather(*(self._apply(owner, a) for a in result.actions), return_exceptions=True)
        rejected = [o for o in outcomes if isinstance(o, ChildRejected)]
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ChildRejected)]
        # Events name what this pass changed, so an object another pass already made is not announced twice.
        events += [_action_event(a) for a, o in zip(result.actions, outcomes, strict=True) if o is True]
        if rejected:
            message = "; ".join(str(r) for r in rejected)[:1000]
            result.status.conditions = set_condition(result.status.conditions, "Reconciling", True, "ChildRejected",
                                                     message, format_time(datetime.now(UTC)), generation)
            # One Warning per distinct rejection, not one per retry.
            if self._rejected.get(key) != message:
                events.append(Event("Warning", "ChildRejected", message))
            self._rejected[key] = message
        elif not failed:
            self._rejected.pop(key, None)
        # Status first: it is what users and the next pass wait for; Events are best-effort commentary.
        await self._write_status(key, status_raw, result.status.to_wire(), stale)
        await asyncio.gather(*(self._event(owner, e) for e in events))
        if failed:
            raise failed[0]
        if rejected:
            raise rejected[0]

    def _status_to_plan_from(self, key: Key, body: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
        """(the status to plan from, the resourceVersions that predate it): our last write while the cache
        still shows an object from before it, else the object's own."""
        status_raw = body.get("status") or {}
        version = str(body["metadata"].get("resourceVersion") or "")
        written = self._written.get(key)
        if written and version in written.stale:
            status_raw = written.status
        elif written:
            written = None
            del self._written[key]
        return status_raw, frozenset({version}) | (written.stale | {written.after} if written else frozenset())

    async def _invalid_spec(self, key: Key, generation: int, status_raw: dict[str, Any], status: DistillationStatus,
                            stale: frozenset[str], error: ValidationError) -> None:
        metrics.TERMINAL_ERRORS.labels(metrics.CONTROLLER).inc()
        message = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in error.errors())[:1000]
        now = format_time(datetime.now(UTC))
        for type_, value in (("Stalled", True), ("Ready", False), ("Reconciling", False)):
            status.conditions = set_condition(status.conditions, type_, value, "InvalidSpec", message, now,
                                              generation)
        status.observed_generation = generation
        await self._write_status(key, status_raw, status.to_wire(), stale)

    async def _observe(self, key: Key, owner: Owner, spec: DistillationSpec) -> Observed:
        """What the planner reads of this Distillation's world, from the cache (and its pods' mount Events)."""
        children = self.cache.children(owner.uid)
        job_uids = {str(c["metadata"]["uid"]) for c in children if c.get("kind") == "Job"}
        source = spec.dataset.labels_from
        labels_source = (self.cache.distillation((owner.namespace, source))
                         if source and not source.startswith(PVC_SCHEME) else None)
        pods = self.cache.pods(key)
        return observe(owner.name, children, pods, self.cache.nodes(), self.cache.queue_messages(job_uids),
                       labels_source, await self._mount_failures(owner.namespace, pods))

    async def _apply(self, owner: Owner, action: Action) -> bool:
        """Apply one action idempotently; returns whether it changed anything. An answer the API server
        will give again (invalid, forbidden, over quota, a name another object holds) raises ChildRejected."""
        kind, name = _target(action)
        try:
            return await self._send(owner, action)
        except ApiError as e:
            self._count(_VERB[type(action)], kind, e.status)
            if e.status >= 500 or e.status == 429:
                raise
            raise ChildRejected(kind, name, e) from None

    async def _send(self, owner: Owner, action: Action) -> bool:
        if isinstance(action, Create):
            manifest = action.manifest
            _, created = await self.client.create(manifest)
            self._count("create", manifest["kind"], 201 if created else 409)
            if not created:
                await self._check_owner(owner, manifest["kind"], manifest["metadata"]["name"])
            return created
        if isinstance(action, Apply):
            await self.client.apply(action.manifest, FIELD_MANAGER)
            self._count("apply", action.manifest["kind"], 200)
            return True
        if isinstance(action, Delete):
            deleted = await self.client.delete(action.kind, action.name, owner.namespace, action.propagation)
            self._count("delete", action.kind, 200 if deleted else 404)
            return deleted
        try:
            await self.client.merge_patch(action.kind, action.name, owner.namespace, action.patch)
            self._count("patch", action.kind, 200)
        except ApiError as e:
            if e.status != 404:
                raise
            self._count("patch", action.kind, 404)
        return False

    async def _check_owner(self, owner: Owner, kind: str, name: str) -> None:
        """An existing child is ours when its controller is this Distillation; another object holding the name
        (a predecessor still being deleted, say) is reported, never adopted."""
        existing = await self.client.get(kind, name, owner.namespace)
        if existing is None or controller_uid(existing) == owner.uid:
            return
        state = "being deleted" if (existing.get("metadata") or {}).get("deletionTimestamp") else "present"
        raise ChildRejected(kind, name, ApiError(409, {
            "reason": "AlreadyExists",
            "message": f"{kind} {name} is {state} and not owned by this Distillation; the operator waits for "
                       f"it to go (it never adopts another owner's object)"}))

    async def _event(self, owner: Owner, event: Event) -> None:
        now = format_time(datetime.now(UTC))
        manifest = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": owner.name,
                               "namespace": owner.namespace, "uid": owner.uid},
            "reason": event.reason,
            "message": event.message[:1000],
            "type": event.type,
            "source": {"component": "distillery-operator"},
            "reportingComponent": "distillery.dev/operator",
            "reportingInstance": "distillery-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.request("POST", f"/api/v1/namespaces/{owner.namespace}/events", body=manifest)
            self._count("create", "Event", 201)
        except ApiError as e:
            # Events are best effort: losing one must not fail the pass.
            self._count("create", "Event", e.status)
            log.info("event for %s/%s not recorded: %s", owner.namespace, owner.name, e)

    async def _write_status(self, key: Key, old: dict[str, Any], new: dict[str, Any], stale: frozenset[str]) -> None:
        if DistillationStatus.model_validate(old).to_wire() == new:
            return
        patch = {k: None for k in old if k not in new} | new
        namespace, name = key
        response = await self.client.merge_patch("Distillation", name, namespace, {"status": patch},
                                                 subresource="status")
        self._count("patch", "Distillation/status", 200)
        self._written[key] = Written(str(response["metadata"].get("resourceVersion") or ""), stale,
                                     response.get("status") or {})

    @staticmethod
    def _count(verb: str, kind: str, code: int) -> None:
        metrics.API_REQUESTS.labels(verb, kind, str(code)).inc()
