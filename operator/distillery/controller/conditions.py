"""Condition bookkeeping with Kubernetes semantics: lastTransitionTime moves only when status flips."""

from distillery.api.status import Condition


def set_condition(conditions: list[Condition], type_: str, status: bool | None, reason: str, message: str,
                  now: str, generation: int | None) -> list[Condition]:
    value = "Unknown" if status is None else ("True" if status else "False")
    message = message[:1000]
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        changed = c.status != value
        out.append(Condition(
            type=type_, status=value, reason=reason, message=message,
            last_transition_time=now if changed else c.last_transition_time,
            observed_generation=generation,
        ))
    if not found:
        out.append(Condition(type=type_, status=value, reason=reason, message=message,
                             last_transition_time=now, observed_generation=generation))
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
