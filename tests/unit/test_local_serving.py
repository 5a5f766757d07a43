"""How the local kubelet runs a server pod: vLLM's container args as `distillery serve`'s, and the Services a
pipeline config asks, routed to the servers that run here."""

import json
from pathlib import Path

from distillery.api.modelref import PVC_MOUNT_ROOT
from distillery.api.pipeline import CONFIG_FILE
from distillery.devcluster.local_kubelet import (
    local_argv,
    reroute_teacher,
    service_host,
    service_of,
    services_asked,
    vllm_as_local_serve,
)
from distillery.resources.vllm import student_vllm_args, teacher_vllm_args


def test_the_teachers_vllm_args_become_distillery_serve_with_the_same_model_name_and_logprobs() -> None:
    args = teacher_vllm_args(model="pvc://models/qwen", served_model_name="teacher", tensor_parallel_size=2,
                             extra_args=["--max-model-len=8192"], max_logprobs=8)["args"]
    assert vllm_as_local_serve(args) == ["distillery", "serve", "--model", f"{PVC_MOUNT_ROOT}/models/qwen",
                                         "--port", "0",
                                         "--served-model-name", "teacher", "--max-logprobs", "8"]


def test_a_lora_module_becomes_the_adapter_merged_under_its_name() -> None:
    args = student_vllm_args(base_model="pvc://models/smol", served_model_name="student",
                             adapter_path="/workspace/run/train/adapter", lora_rank=16)["args"]
    assert vllm_as_local_serve(args)[-4:] == ["--served-model-name", "student",
                                              "--adapter", "/workspace/run/train/adapter"]


def test_mounted_paths_of_a_vllm_container_are_this_machines() -> None:
    container = {"args": ["/pvc/models/smol", "--enable-lora", "--lora-modules", "student=/workspace/a",
                          "--port", "8000"]}
    argv = local_argv(container, {}, {"/workspace": Path("/tmp/ws"), "/pvc/models": Path("/tmp/models")})
    assert argv[argv.index("--adapter") + 1] == "/tmp/ws/a"
    assert argv[argv.index("--model") + 1] == "/tmp/models/smol"


def test_a_service_routes_to_the_server_of_its_pod_here() -> None:
    pod = {"metadata": {"name": "demo-teacher-5d9f7c-abcde",
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "demo-teacher-5d9f7c"}]}}
    assert service_of(pod) == "demo-teacher"
    config = {"name": "demo", "namespace": "default", "task": "math", "student": {"model": "s"},
              "teacher": {"base_url": "http://demo-teacher.default.svc:8000/v1", "model": "teacher"},
              "dataset": {"train": {"rows": [{"question": "q", "answer": "1"}]}},
              "workspace": {"root": "/workspace"}}
    configmaps = {"demo-pipeline": {CONFIG_FILE: json.dumps(config)}}
    assert services_asked(configmaps) == {"demo-teacher"}
    assert service_host("http://demo-teacher.default.svc:8000/v1") == "demo-teacher"
    reroute_teacher(configmaps, None, served={"demo-teacher": "http://127.0.0.1:4242/v1"})
    assert json.loads(configmaps["demo-pipeline"][CONFIG_FILE])["teacher"]["baseUrl"] == "http://127.0.0.1:4242/v1"
