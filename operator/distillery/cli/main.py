"""`distillery ...`: one entry point for the operator, the workloads and the dev tools.

Each subcommand imports its module lazily so the operator image needs no torch
and the trainer image needs no kopf.
"""

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("distillery.controller.main", "Run the operator (kopf)."),
    "crd": ("distillery.api.crd", "Write the CRD generated from the API models."),
    "dev-cluster": ("distillery.devcluster.cli", "Local control plane: up | down | status | kubeconfig."),
    "status": ("distillery.cli.status", "Print a readable summary of a Distillation."),
    "generate": ("distillery.workloads.generator", "Generation workload: the teacher writes new inputs from seeds."),
    "label": ("distillery.workloads.labeler", "Labeling workload: prompt the teacher over the dataset."),
    "train": ("distillery.workloads.trainer", "Training workload: fine-tune the student with DeepSpeed."),
    "launch": ("distillery.workloads.launch", "torchrun for the training Job, exiting with its workers' exit code."),
    "evaluate": ("distillery.workloads.evaluator", "Evaluation workload: teacher vs base vs distilled student."),
    "serve": ("distillery.workloads.serve", "Serve a model behind an OpenAI-compatible API (CPU path)."),
    "demo": ("distillery.devcluster.demo", "Bring up the local cluster, the operator and a sample Distillation."),
}


def _usage() -> str:
    lines = ["usage: distillery <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"distillery: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)



if __name__ == "__main__":
    sys.exit(main())
