"""`distillery launch` (the training Job's command) passes the workers' exit code on, which torchrun does not:
the Job's podFailurePolicy fails training at once on a configuration error only if it sees exit 2 or 3."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import distillery

OPERATOR_DIR = str(Path(distillery.__file__).resolve().parents[1])


def run(launcher: list[str], script: Path, code: int) -> int:
    env = {**os.environ, "PYTHONPATH": OPERATOR_DIR}
    argv = [*launcher, "--standalone", "--nnodes", "1", "--nproc-per-node", "2", str(script), str(code)]
    return subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode


@pytest.mark.workload
@pytest.mark.parametrize("code", [0, 2, 3])
def test_the_workers_exit_code_is_the_pods(tmp_path: Path, code: int) -> None:
    script = tmp_path / "worker.py"
    # Rank 1 fails the way the trainer does on a bad configuration; rank 0 would have succeeded.
    script.write_text("import os, sys\nsys.exit(int(sys.argv[1]) if os.environ['RANK'] == '1' else 0)\n")

    assert run([sys.executable, "-m", "distillery.cli", "launch"], script, code) == code
    if code:
        # What the pod would have reported with torchrun itself as its command.
        assert run([sys.executable, "-m", "torch.distributed.run"], script, code) == 1
