"""What a stage pod reads from its environment beyond pipeline.json (where its volumes are).

In a cluster the manifest mounts the workspace at `WORKSPACE_DIR` and each `pvc://` claim under
`PVC_MOUNT_ROOT`; the local kubelet, which runs pods as processes on one machine, points both elsewhere.
Read at call time, never at import time.
"""

import os

from distillery.api.modelref import PVC_MOUNT_ROOT
from distillery.api.pipeline import PVC_BASE_ENV, WORKSPACE_ENV, PipelineConfig, TeacherClientConfig, WorkspaceLayout


def pvc_base() -> str:
    """Where this pod finds `pvc://` claims."""
    return os.environ.get(PVC_BASE_ENV) or PVC_MOUNT_ROOT


def workspace_layout(cfg: PipelineConfig) -> WorkspaceLayout:
    """The pipeline's workspace, rooted where this pod has it mounted."""
    root = os.environ.get(WORKSPACE_ENV)
    return cfg.workspace.model_copy(update={"root": root}) if root else cfg.workspace


def teacher_api_key(teacher: TeacherClientConfig) -> str | None:
    """A teacher's bearer token from the variable its client config names (an endpoint teacher of several, or
    teacherStrategy's judge); None lets the client fall back to TEACHER_API_KEY."""
    return os.environ.get(teacher.api_key_env) if teacher.api_key_env else None

