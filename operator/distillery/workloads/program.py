"""What every stage program does around its work: run it, turn a configuration error into exit code 2 with
the reason, write the report as the termination message and on stdout, exit with the program's code.

A program's `main()` parses its arguments and passes its work as a function returning (exit code, report):

    def main(argv=None):
        args = parse_args(argv)
        return run_program("train", lambda: train(args), CONFIG_ERRORS, lambda error: TrainingReport(error=error))
"""

import logging
import sys
from collections.abc import Callable

from distillery.api.reports import ExitCode, Report
from distillery.workloads.progress import compact_json, write_termination_message

ProgramResult = tuple[ExitCode, Report]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _always() -> bool:
    return True


def run_program(name: str, work: Callable[[], ProgramResult], config_errors: tuple[type[Exception], ...],
                error_report: Callable[[str], Report], *, reports: Callable[[], bool] = _always,
                prints: Callable[[], bool] = _always, cleanup: Callable[[], None] | None = None) -> int:
    """`distillery <name>`'s exit code. `config_errors`: what `work` raises for a configuration error (exit 2,
    the error in the stage's report made by `error_report`); anything else is a crash (exit 1, retried).
    `reports`/`prints`, asked once the work is done: whether this process writes the termination message and
    prints the report (of a training node's processes only local rank 0 writes one, and only rank 0 prints).
    `cleanup` runs after the work, however it ended."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    try:
        code, report = work()
    except config_errors as err:
        code, report = ExitCode.CONFIG, error_report(f"{type(err).__name__}: {err}"[:2000])
    finally:
        if cleanup is not None:
            cleanup()
    if reports():
        write_termination_message(report)
    if code != ExitCode.OK:
        print(f"distillery {name}: {report.error or f'exit {int(code)}'}", file=sys.stderr)
    if prints():
        print(compact_json(report.dump()), flush=True)
    return int(code)
