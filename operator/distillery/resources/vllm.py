"""Arguments for the upstream vLLM OpenAI-compatible server (teacher and student)."""

SERVED_TEACHER_NAME = "teacher"
SERVED_STUDENT_NAME = "student"


def model_path(uri: str) -> str:
    """pvc://claim/path is mounted at /mnt/pvc/claim/path; hf:// and plain ids go to the hub."""
    if uri.startswith("pvc://"):
        return "/mnt/pvc/" + uri.removeprefix("pvc://")
    return uri.removeprefix("hf://")


def teacher_args(model: str, tensor_parallel: int, port: int, extra: list[str]) -> list[str]:
    return [
        "--model", model_path(model),
        "--served-model-name", SERVED_TEACHER_NAME,
        "--tensor-parallel-size", str(tensor_parallel),
        "--host", "0.0.0.0", "--port", str(port),
        *extra,
    ]


def student_args(base_model: str, adapter_dir: str | None, merged_dir: str | None, port: int) -> list[str]:
    """Serve the merged weights when there are some, else the base model with the LoRA adapter."""
    if merged_dir:
        return ["--model", merged_dir, "--served-model-name", SERVED_STUDENT_NAME,
                "--host", "0.0.0.0", "--port", str(port)]
    args = ["--model", model_path(base_model), "--served-model-name", "base",
            "--host", "0.0.0.0", "--port", str(port)]
    if adapter_dir:
        args += ["--enable-lora", "--lora-modules", f"{SERVED_STUDENT_NAME}={adapter_dir}", "--max-lora-rank", "256"]
    return args
