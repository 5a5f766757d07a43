"""`distillery launch`: torchrun that exits with its workers' exit code.

torchrun exits 1 whenever a worker fails, so a configuration error (exit 2) and a crash look the
same to Kubernetes. The training Job's podFailurePolicy fails the Job at once on the workloads'
configuration exit codes; this keeps those codes visible: the first failed worker's code, or
128 + the signal for a worker or an agent ended by a signal (SIGTERM on suspend or drain).
"""

import sys
from collections.abc import Sequence


def exit_code(code: int) -> int:
    """A worker's exit code as a shell reports it: negative codes are signals."""
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(list(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return exit_code(failure.exitcode)
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
