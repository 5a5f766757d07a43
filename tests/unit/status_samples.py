"""Distillations as the API server holds them, for the status view's and the CLI's tests."""

from typing import Any


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-28T10:00:00Z", "observedGeneration": 1}


def stage(state: str, start: str | None = None, end: str | None = None, message: str | None = None,
          gpu_hours: float | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"state": state}
    for key, value in (("startTime", start), ("completionTime", end), ("message", message), ("gpuHours", gpu_hours)):
        if value is not None:
            record[key] = value
    return record


SUCCEEDED: dict[str, Any] = {
    "apiVersion": "distillery.dev/v1alpha1",
    "kind": "Distillation",
    "metadata": {"name": "conjnli", "namespace": "research", "generation": 1},
    "spec": {
        "task": "nli", "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpuType": "H100", "gpus": 8,
                    "tensorParallelSize": 8, "replicas": 1},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "method": "lora", "nodes": 2, "gpusPerNode": 8,
                    "gpuType": "H100"},
    },
    "status": {
        "observedGeneration": 1,
        "phase": "Succeeded",
        "gpuHours": 61.25,
        "studentEndpoint": "http://conjnli-student.research.svc:8000/v1",
        "stages": {
            "teacher": stage("Removed", "2026-11-28T10:00:00Z", "2026-11-28T11:02:00Z",
                             "teacher removed after labeling to free its GPUs", 8.27),
            "labeling": stage("Succeeded", "2026-11-28T10:05:00Z", "2026-11-28T11:01:30Z", "labeling job completed"),
            "training": stage("Succeeded", "2026-11-28T11:02:00Z", "2026-11-28T14:12:45Z", "training job completed",
                              50.87),
            "evaluation": stage("Succeeded", "2026-11-28T14:13:00Z", "2026-11-28T14:20:00Z",
                                "evaluation job completed", 1.11),
            "serving": stage("Succeeded", "2026-11-28T14:20:05Z", "2026-11-28T14:21:00Z", "1 replica(s) serving"),
        },
        "progress": {"rowsLabeled": 5611, "rowsRejected": 12, "rowsTotal": 5623, "trainStep": 702,
                     "trainSteps": 702, "trainLoss": 0.4123, "teacherTokensIn": 2871340,
                     "teacherTokensOut": 1940221},
        "results": [
            {"model": "teacher", "prompt": "cot", "metric": "accuracy", "score": 69.98, "rows": 623},
            {"model": "base-student", "prompt": "cot", "metric": "accuracy", "score": 52.81, "rows": 623},
            {"model": "distilled-student", "prompt": "short", "metric": "accuracy", "score": 63.88, "rows": 623},
        ],
        "conditions": [
            cond("Ready", "True", "StudentServing", "1 replica(s) at http://conjnli-student.research.svc:8000/v1"),
            cond("Succeeded", "True", "Completed", "every stage finished"),
            cond("Failed", "False", "NoFailure"),
            cond("Reconciling", "False", "Completed"),
            cond("Stalled", "False", "NotStalled"),
            cond("Suspended", "False", "NotSuspended"),
            cond("TeacherReady", "False", "RemovedAfterLabeling", "teacher removed after labeling to free its GPUs"),
            cond("Labeled", "True", "Succeeded", "labeling job completed"),
            cond("Trained", "True", "Succeeded", "training job completed"),
            cond("Evaluated", "True", "Succeeded", "evaluation job completed"),
            cond("StudentReady", "True", "Serving", "1 replica(s)"),
        ],
    },
}
