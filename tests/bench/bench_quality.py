"""What distillation does, measured: real Distillations through the operator on a fixed sample of GSM8K.

Each setting is one Distillation on the local control plane with real models (devcluster/real_sample.py): the
teacher Deployment's pod serves Qwen2.5-Coder-0.5B-Instruct under llama.cpp, the student is SmolLM2-135M-Instruct
with LoRA. The sample is fixed: GSM8K train rows 0..--train-1 are labeled and trained on, test rows 0..--test-1
are the held-out rows every score is on. Settings:

- `rationale`: the teacher's chain-of-thought labels, the student trained on rationale + answer
  (student.includeRationale true).
- `answer`: the same labels (dataset.labelsFrom the first, so no teacher runs again), trained on the answer only.

For each: teacher with chain-of-thought, base student with chain-of-thought, distilled student with the short
prompt (the seed's three rows), each with its row count and a 95% Wilson interval; beside them two baselines a
student could reach without learning the task, computed from the data: the majority answer of the training
labels, and the last number in the question (a student that learned the answer format alone); and the share of
the base -> teacher gap the distilled student closes.

    PYTHONPATH=operator:. ~/.cache/distillery/venv/bin/python tests/bench/bench_quality.py --train 40 --test 30

Runs on CPU: about 10 s of teacher time per labeled row on 2 cores, then minutes of training and evaluation.
"""

import argparse
import json
import math
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from distillery.api import crd
from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.cluster import DevCluster
from distillery.devcluster.demo import LocalWorkloads, models_claim
from distillery.devcluster.real_sample import gsm8k_rows, real_sample
from distillery.workloads.tasks import get_task
from tests.cluster.operator_process import OperatorProcess

NAMESPACE = "default"
Z95 = 1.959964


def wilson(score_percent: float, rows: int) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy, in percent."""
    if rows == 0:
        return (0.0, 100.0)
    p = score_percent / 100
    centre = (p + Z95**2 / (2 * rows)) / (1 + Z95**2 / rows)
    half = Z95 * math.sqrt(p * (1 - p) / rows + Z95**2 / (4 * rows**2)) / (1 + Z95**2 / rows)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def baselines(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, float]:
    math_task = get_task(Task.MATH, PromptSpec(), {})
    references = [math_task.reference(r) for r in test]
    majority = Counter(math_task.reference(r) for r in train).most_common(1)[0][0]
    last_number = [math_task.prediction((re.findall(r"\d[\d,]*(?:\.\d+)?", r["question"]) or [""])[-1]) for r in test]
    return {
        "majority answer": 100 * sum(ref == majority for ref in references) / len(test),
        "last number in the question": 100 * sum(p == ref for p, ref in zip(last_number, references, strict=True))
        / len(test),
    }


def run(cluster: DevCluster, kubeconfig: Path, root: Path, manifest: dict[str, Any], timeout: float
        ) -> dict[str, Any]:
    name = manifest["metadata"]["name"]
    workloads = LocalWorkloads(manifest, kubeconfig, root / "local", real_models=True)
    start = time.monotonic()
    workloads.start()
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        while time.monotonic() - start < timeout:
            got = json.loads(cluster.kubectl("get", "distillation", name, "-n", NAMESPACE, "-o", "json").stdout)
            status = got.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                status["wallSeconds"] = round(time.monotonic() - start)
                return dict(status)
            time.sleep(5)
        raise TimeoutError(f"{name} did not finish in {timeout} s")
    finally:
        workloads.stop()


def report(setting: str, status: dict[str, Any], floor: dict[str, float]) -> list[str]:
    results = {r["model"]: r for r in status.get("results", [])}
    lines = [f"{setting}: {status.get('phase')} in {status.get('wallSeconds')} s; labeled "
             f"{status.get('progress', {}).get('rowsLabeled')} rows, rejected "
             f"{status.get('progress', {}).get('rowsRejected', 0)}"]
    for model in ("teacher", "base-student", "distilled-student"):
        r = results.get(model)
        if r is None or r.get("score") is None:
            lines.append(f"  {model:<18} (no score)")
            continue
        low, high = wilson(r["score"], r["rows"])
        lines.append(f"  {model:<18} {r['prompt']:<6} {r['metric']:<12} {r['score']:6.2f}  [{low:5.1f}, {high:5.1f}]"
                     f"  n={r['rows']}")
    for label, value in floor.items():
        lines.append(f"  {'baseline':<18} {label}: {value:.2f}")
    try:
        teacher, base, distilled = (results[m]["score"] for m in ("teacher", "base-student", "distilled-student"))
        gap = teacher - base
        closed = f"{100 * (distilled - base) / gap:.1f}%" if gap > 0 else "n/a (the teacher is not above the base)"
        lines.append(f"  gap closed: {closed} (base {base:.2f} -> distilled {distilled:.2f}, teacher {teacher:.2f})")
    except (KeyError, TypeError):
        pass
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=40, help="GSM8K train rows 0..N-1 (labeled, trained on)")
    parser.add_argument("--test", type=int, default=30, help="GSM8K test rows 0..N-1 (held out, scored)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512, help="the teacher's chain-of-thought budget")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--json", type=Path, help="also write the statuses here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped like Ctrl-C: the cleanup below runs

    cluster = DevCluster("bench-quality")
    kubeconfig = cluster.up()
    root = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    with open(root / "crd.yaml", "w") as out:
        out.write(crd.render())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "crd.yaml"))
    cluster.wait_established("distillations.distillery.dev")
    config = root / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "24h"}}))
    operator = OperatorProcess(kubeconfig, root, config)
    operator.start()
    statuses: dict[str, dict[str, Any]] = {}
    try:
        # A fixed sample: an earlier run's Distillations (and their labels) must not be reused.
        cluster.kubectl("delete", "distillations", "--all", "-n", NAMESPACE, "--wait=true")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(models_claim(NAMESPACE)))
        first = real_sample(train_rows=args.train, validation_rows=args.test, max_tokens=args.max_tokens)
        first["metadata"]["name"] = "quality-rationale"
        first["spec"]["student"]["epochs"] = args.epochs
        first["spec"]["serving"] = {"enabled": False}
        second = json.loads(json.dumps(first))
        second["metadata"]["name"] = "quality-answer"
        second["spec"]["dataset"]["labelsFrom"] = "quality-rationale"
        second["spec"]["student"]["includeRationale"] = False
        for setting, manifest in (("rationale", first), ("answer", second)):
            statuses[setting] = run(cluster, kubeconfig, root, manifest, args.timeout)
    finally:
        operator.stop()
    floor = baselines(gsm8k_rows("train", args.train), gsm8k_rows("test", args.test))
    print(f"\nGSM8K, train rows 0..{args.train - 1}, held-out test rows 0..{args.test - 1}; teacher "
          f"Qwen2.5-Coder-0.5B-Instruct (llama.cpp, Q4_K_M), student SmolLM2-135M-Instruct (LoRA r16, "
          f"{args.epochs} epochs); 95% Wilson intervals")
    for setting, status in statuses.items():
        print("\n".join(report(setting, status, floor)))
    if args.json:
        args.json.write_text(json.dumps(statuses, indent=2))
    return 0 if all(s.get("phase") == "Succeeded" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
