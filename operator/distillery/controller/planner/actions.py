"""What a pass hands the reconciler: actions on children, the new status, and Events."""

from dataclasses import dataclass, field
from typing import Any

from distillery.api.status import DistillationStatus


@dataclass(frozen=True)
class Create:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    propagation: str = "Background"
    """Foreground keeps the object until its dependents are gone (a Job until its pods have ended)."""


@dataclass(frozen=True)
class Patch:
    kind: str
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class Apply:
    """Server-side apply of a child that exists: its desired fields changed since they were last applied."""

    manifest: dict[str, Any]


Action = Create | Delete | Patch | Apply


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    status: DistillationStatus = field(default_factory=DistillationStatus)
    events: list[Event] = field(default_factory=list)
