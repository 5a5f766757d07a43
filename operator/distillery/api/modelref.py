"""Model and data references as a Distillation writes them (`pvc://claim/path`, `hf://org/name`, a hub id).

Both sides of the pipeline read them: the manifest builders mount each `pvc://` claim at
`PVC_MOUNT_ROOT/<claim>`, and the pod programs resolve the reference to that path. The mount root is a
constant of the contract; only a pod program may be pointed elsewhere (the local kubelet does so through
`PVC_BASE_ENV`), never the operator.
"""

from pathlib import PurePosixPath

PVC_SCHEME = "pvc://"
HF_SCHEME = "hf://"
PVC_MOUNT_ROOT = "/mnt/pvc"
"""Where stage and serving pods mount the claims that `pvc://` references name."""


def pvc_parts(ref: str) -> tuple[str, str] | None:
    """(claim, path inside the claim) of a `pvc://claim/path` reference, else None."""
    if not ref.startswith(PVC_SCHEME):
        return None
    claim, _, rel = ref.removeprefix(PVC_SCHEME).partition("/")
    return claim, rel


def pvc_claims(*refs: str | None) -> list[str]:
    """The distinct claims that these references name, in order."""
    claims: list[str] = []
    for ref in refs:
        parts = pvc_parts(ref) if ref else None
        if parts is not None and parts[0] not in claims:
            claims.append(parts[0])
    return claims


def resolve_model_ref(ref: str, pvc_base: str = PVC_MOUNT_ROOT) -> str:
    """What `from_pretrained` and vLLM take for a model reference.

    pvc://claim/path -> <pvc_base>/claim/path; hf://org/name -> org/name (a hub id);
    anything else (a local path or a hub id) as is.
    """
    parts = pvc_parts(ref)
    if parts is not None:
        return str(PurePosixPath(pvc_base, *parts))
    if ref.startswith(HF_SCHEME):
        return ref.removeprefix(HF_SCHEME).strip("/")
    return ref


def is_local_ref(ref: str) -> bool:
    """True when `ref` names files on disk rather than a hub id."""
    return ref.startswith((PVC_SCHEME, "/", "./", "../", "~"))
