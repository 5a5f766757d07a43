"""The trainer on CPU: DeepSpeed ZeRO-2 (DS_ACCELERATOR=cpu, gloo) fine-tuning a tiny LoRA student,
run as `python -m distillery.cli train` exactly as the training pod runs it."""

import json
import random
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from distillery.api.reports import ExitCode, TrainingReport
from distillery.devcluster.ports import free_port
from distillery.workloads import trainer
from distillery.workloads.finetune_data import FinetuneSet
from distillery.workloads.trainer import DataPlan, lr_factor
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload


def losses(metrics: dict) -> list[float]:
    return [entry["loss"] for entry in metrics["loss"]]


@pytest.fixture(scope="module")
def plan(trained: Path) -> tuple[DataPlan, FinetuneSet]:
    return tm.training_plan(trained / "pipeline.json")


def test_zero2_lora_training_lowers_the_loss(trained: Path, plan: tuple[DataPlan, FinetuneSet]) -> None:
    total_steps = plan[0].steps_for_epochs(tm.STUDENT["epochs"])
    metrics = json.loads((trained / "train" / "metrics.json").read_text())
    curve = losses(metrics)
    assert [entry["step"] for entry in metrics["loss"]] == list(range(1, total_steps + 1))
    assert sum(curve[-4:]) / 4 < 0.5 * sum(curve[:4]) / 4, curve
    assert metrics["zero_stage"] == 2 and metrics["world_size"] == 1 and metrics["tokens_per_second"] > 0
    assert metrics["examples"] == tm.TRAIN_ROWS - 1 and metrics["rejected"] == 1

    summary = json.loads((trained / "termination-log").read_text())
    assert summary["steps"] == total_steps and summary["final_loss"] == curve[-1]
    # What the operator reads: every key the trainer wrote is one TrainingReport knows.
    report = TrainingReport.parse((trained / "termination-log").read_text())
    assert report is not None and report.dump() == summary
    assert (report.rank, report.steps, report.world_size, report.error) == (0, total_steps, 1, None)
    assert json.loads((trained / "train.stdout").read_text().strip().splitlines()[-1]) == summary


def test_micro_batches_are_packed_to_the_token_budget(trained: Path, plan: tuple[DataPlan, FinetuneSet]) -> None:
    data_plan, data = plan
    budget = tm.STUDENT["max_seq_length"] * tm.STUDENT["batch_size"]
    metrics = json.loads((trained / "train" / "metrics.json").read_text())
    assert metrics["tokens_per_device"] == data_plan.token_budget == budget
    epoch = data_plan.epoch_micro_batches(0)
    assert sorted(i for batch in epoch for i in batch) == list(range(len(data.examples)))
    assert all(sum(data_plan.lengths[i] for i in batch) <= budget for batch in epoch)
    # More examples per micro-batch than batchSize: the rows hold several each.
    assert len(epoch) < len(data.examples) / tm.STUDENT["batch_size"]


def test_the_token_count_is_the_real_tokens_trained_on(trained: Path, plan: tuple[DataPlan, FinetuneSet]) -> None:
    # One process: each epoch trains every example exactly once, and the run is a whole number of epochs.
    real_tokens = sum(len(e.input_ids) for e in plan[1].examples)
    metrics = json.loads((trained / "train" / "metrics.json").read_text())
    assert metrics["tokens"] == tm.STUDENT["epochs"] * real_tokens
    steps = [e for e in tm.json_lines((trained / "train.stdout").read_text()) if e.get("event") == "step"]
    assert sum(e["tokens"] for e in steps) == metrics["tokens"]
    assert metrics["tokens_per_second"] == pytest.approx(metrics["tokens"] / metrics["train_seconds"], rel=1e-3)


def test_outputs_are_an_adapter_and_merged_weights(trained: Path, model_dir: Path) -> None:
    adapter = trained / "train" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    assert any(tensor.abs().sum() > 0 for name, tensor in weights.items() if "lora_B" in name)

    merged = load_file(trained / "train" / "merged" / "model.safetensors")
    base = load_file(model_dir / "model.safetensors")
    assert merged.keys() == base.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not merged[name].equal(base[name])
    assert merged["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])
    assert (trained / "train" / "merged" / "tokenizer.json").exists()


def test_checkpoints_keep_the_newest_two(trained: Path, plan: tuple[DataPlan, FinetuneSet]) -> None:
    total_steps = plan[0].steps_for_epochs(tm.STUDENT["epochs"])
    every = tm.STUDENT["checkpoint_steps"]
    names = sorted(p.name for p in (trained / "train" / "checkpoints").iterdir())
    newest = [(total_steps - 1) // every * every, total_steps]
    assert names == [f"step-{step:08d}" for step in newest]


def test_kill_and_resume_redoes_no_finished_step(tmp_path: Path, model_dir: Path, trained: Path) -> None:
    config = tm.labeled_workspace(tmp_path, model_dir)
    total_steps = tm.training_plan(config)[0].steps_for_epochs(tm.STUDENT["epochs"])
    termination = tmp_path / "termination-log"
    command = [tm.PYTHON, "-m", "distillery.cli", "train", "--config", str(config)]
    with open(tmp_path / "run1.stderr", "w") as stderr:
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env=tm.subprocess_env(termination))
        lines = []
        assert first.stdout is not None
        for line in first.stdout:
            lines.append(line)
            if '"event":"checkpoint"' in line:
                first.send_signal(signal.SIGKILL)
                break
        lines += first.stdout.read().splitlines()
        assert first.wait(timeout=60) == -signal.SIGKILL
    run1 = tm.json_lines("\n".join(lines))
    saved = [e["step"] for e in run1 if e.get("event") == "checkpoint"]
    assert saved and saved[-1] < total_steps
    assert not (tmp_path / "train" / "metrics.json").exists()

    second = tm.distillery(["train", "--config", str(config)], termination)
    assert second.returncode == 0, second.stderr[-4000:]
    run2 = tm.json_lines(second.stdout)
    resume = next(e for e in run2 if e.get("event") == "resume")
    assert resume["step"] == saved[-1]
    redone = [e["step"] for e in run2 if e.get("event") == "step"]
    assert redone == list(range(saved[-1] + 1, total_steps + 1))

    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == saved[-1]
    assert [e["step"] for e in metrics["loss"]] == list(range(1, total_steps + 1))
    # Optimizer, scheduler, data position and RNG all came back: the curve is the uninterrupted one.
    reference = losses(json.loads((trained / "train" / "metrics.json").read_text()))
    assert losses(metrics) == pytest.approx(reference, rel=1e-4, abs=1e-5)
    assert json.loads(termination.read_text())["steps"] == total_steps


def test_sigterm_checkpoints_at_the_next_step_and_exits(tmp_path: Path, model_dir: Path) -> None:
    config = tm.labeled_workspace(tmp_path, model_dir, checkpoint_steps=1000, merge_weights=False)
    total_steps = tm.training_plan(config)[0].steps_for_epochs(tm.STUDENT["epochs"])
    command = [tm.PYTHON, "-m", "distillery.cli", "train", "--config", str(config)]
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=tm.subprocess_env(tmp_path / "termination-log"))
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"event":"step"' in line:
                proc.send_signal(signal.SIGTERM)
                break
        out = proc.stdout.read()
        assert proc.wait(timeout=60) == ExitCode.TERMINATED == 143
    events = tm.json_lines(out)
    stopped = next(e for e in events if e.get("event") == "terminated")["step"]
    assert stopped < total_steps
    report = TrainingReport.parse((tmp_path / "termination-log").read_text())
    assert report is not None and (report.terminated, report.step, report.total_steps) == (True, stopped, total_steps)
    assert (tmp_path / "train" / "checkpoints" / f"step-{stopped:08d}").is_dir()


def test_data_plan_covers_every_example_once_an_epoch_across_ranks() -> None:
    # Ten examples of 100 tokens, 200 tokens a micro-batch: 5 global micro-batches, one repeated for rank 1.
    ranks = [DataPlan(lengths=(100,) * 10, token_budget=200, accumulation=1, world_size=2, rank=r, seed=3)
             for r in (0, 1)]
    per_epoch = ranks[0].micro_batches_in_epoch(0)
    assert per_epoch == 3
    epoch0 = [i for plan in ranks for k in range(per_epoch) for i in plan.micro_batch_indices(k)]
    assert set(epoch0) == set(range(10)) and len(epoch0) == 12  # 2 wrap around to fill the last batch
    epoch1 = [i for k in range(per_epoch, 2 * per_epoch) for i in ranks[0].micro_batch_indices(k)]
    assert epoch1 != epoch0[: len(epoch1)]
    assert ranks[0].step_micro_batches(2) == [ranks[0].micro_batch_indices(1)]
    assert ranks[0].steps_for_epochs(2) == 6


def test_data_plan_fills_micro_batches_up_to_the_token_budget_in_a_seeded_order() -> None:
    lengths = tuple(random.Random(0).randint(20, 120) for _ in range(200))
    plan = DataPlan(lengths=lengths, token_budget=512, accumulation=2, world_size=1, rank=0, seed=11)
    for epoch in range(3):
        batches = plan.epoch_micro_batches(epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(200))
        loads = [sum(lengths[i] for i in batch) for batch in batches]
        assert max(loads) <= 512
        # Next fit: a micro-batch closes only when the following example would not fit.
        assert all(load + lengths[nxt[0]] > 512 for load, nxt in zip(loads, batches[1:], strict=False))
    # A fresh plan (a restarted process) gives the same micro-batches for the same step.
    again = DataPlan(lengths=lengths, token_budget=512, accumulation=2, world_size=1, rank=0, seed=11)
    assert [again.step_micro_batches(s) for s in (1, 40, 75)] == [plan.step_micro_batches(s) for s in (1, 40, 75)]
    assert plan.epoch_micro_batches(1) != plan.epoch_micro_batches(0)


def test_lr_warms_up_then_decays_to_a_tenth() -> None:
    assert lr_factor(0, 100) == pytest.approx(1 / 3)
    assert lr_factor(2, 100) == pytest.approx(1.0)
    assert lr_factor(99, 100) == pytest.approx(0.1, abs=1e-3)


def test_two_processes_share_the_work_over_gloo(tmp_path: Path, model_dir: Path) -> None:
    config = tm.labeled_workspace(tmp_path, model_dir, epochs=2, checkpoint_steps=4, merge_weights=False)
    command = [tm.PYTHON, "-m", "distillery.cli", "train", "--config", str(config)]
    port = str(free_port())
    ranks = []
    for rank in (0, 1):
        env = tm.subprocess_env(tmp_path / f"termination-log-{rank}")
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
                "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [proc.communicate(timeout=240) for proc in ranks]
    assert [proc.returncode for proc in ranks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    total_steps = tm.training_plan(config, world_size=2)[0].steps_for_epochs(2)
    steps = [e["step"] for e in tm.json_lines(outputs[0][0]) if e.get("event") == "step"]
    assert steps == list(range(1, total_steps + 1)) and outputs[1][0].strip() == ""
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["total_steps"] == total_steps
    last = tmp_path / "train" / "checkpoints" / f"step-{total_steps:08d}"
    assert sorted(p.name for p in last.glob("rng-rank*.pt")) == ["rng-rank00000.pt", "rng-rank00001.pt"]
    lead = TrainingReport.parse((tmp_path / "termination-log-0").read_text())
    assert lead is not None and (lead.rank, lead.world_size, lead.steps) == (0, 2, total_steps)
    assert not (tmp_path / "termination-log-1").exists()  # one message per pod: local rank 0 writes it


def test_a_missing_student_model_fails_with_a_clear_message(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = tm.labeled_workspace(tmp_path, "pvc://models/absent")
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    assert trainer.main(["--config", str(config)]) == ExitCode.CONFIG
    error = json.loads((tmp_path / "termination-log").read_text())["error"]
    assert "pvc://models/absent" in error and "/mnt/pvc/models/absent does not exist" in error


def test_labels_without_an_accepted_row_fail_with_no_data(tmp_path: Path, model_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = tm.labeled_workspace(tmp_path, model_dir)
    rows = tm.nli_rows(tm.TRAIN_ROWS)
    tm.write_labels(tmp_path, "train", rows, [None] * len(rows))
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    assert trainer.main(["--config", str(config)]) == ExitCode.NO_DATA
    report = TrainingReport.parse((tmp_path / "termination-log").read_text())
    assert report is not None and report.error is not None
    assert report.rejected == tm.TRAIN_ROWS and report.examples == 0
