"""The Dockerfiles, read without docker: non-root numeric user, pinned bases, an entry point that
exists, and extras and pins that agree with pyproject.toml."""

import ast
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from distillery.cli.main import COMMANDS
from tests.dockerfiles import Stage, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGES = {"operator": ("operator", "operator"), "labeler": ("label", "sources"), "trainer": ("train", "trainer")}


def exec_form(args: str | None) -> list[str]:
    assert args and args.startswith("["), f"use the exec (JSON) form, got {args!r}"
    return json.loads(args)


def load(image: str) -> list[Stage]:
    return parse_dockerfile((REPO / "images" / image / "Dockerfile").read_text())


def pip_installs(stages: list[Stage]) -> list[list[str]]:
    """Argument lists of every `pip install` in RUN instructions."""
    installs = []
    for stage in stages:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run):
                words = shlex.split(command)
                for i, word in enumerate(words[:-1]):
                    if word.endswith("pip") and words[i + 1] == "install":
                        installs.append(words[i + 2:])
    return installs


def test_parser_handles_stages_continuations_and_comments() -> None:
    stages = parse_dockerfile("ARG V=1\nFROM a:1 AS build\n# note\nRUN x \\\n  && y\nFROM b:2\nUSER 10:10\n")
    assert [(s.base, s.alias) for s in stages] == [("a:1", "build"), ("b:2", None)]
    assert stages[0].instructions == [("RUN", "x  && y")]
    assert stages[1].last("USER") == "10:10"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    user = load(image)[-1].last("USER")
    assert user, "no USER in the final stage: the image would run as root"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: use a numeric uid so runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image: str) -> None:
    stages = load(image)
    aliases = {s.alias for s in stages if s.alias}
    for stage in stages:
        if stage.base in aliases:
            continue
        name, _, digest = stage.base.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert digest.startswith("sha256:") or (tag and tag != "latest"), f"unpinned base image {stage.base}"
        assert "$" not in stage.base, f"base image {stage.base} depends on a build argument"


@pytest.mark.parametrize("image", IMAGES)
def test_entry_point_is_a_distillery_command_with_a_main(image: str) -> None:
    subcommand = IMAGES[image][0]
    final = load(image)[-1]
    assert exec_form(final.last("ENTRYPOINT")) == ["distillery"]
    assert exec_form(final.last("CMD")) == [subcommand]
    assert PYPROJECT["project"]["scripts"]["distillery"] == "distillery.cli.main:main"
    assert subcommand in COMMANDS, f"`distillery {subcommand}` is not a command"
    # Found and parsed, not imported: the trainer's module needs torch, which unit tests do not.
    spec = importlib.util.find_spec(COMMANDS[subcommand][0])
    assert spec and spec.origin, f"module {COMMANDS[subcommand][0]} not found"
    tree = ast.parse(Path(spec.origin).read_text())
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body), (
        f"{COMMANDS[subcommand][0]} has no top-level main()")


@pytest.mark.parametrize("image", IMAGES)
def test_installs_this_package_with_extras_that_exist(image: str) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = []
    for args in pip_installs(load(image)):
        for arg in args:
            match = re.fullmatch(r"\.\[([a-z0-9_,-]+)\]", arg)
            if match:
                installed += match.group(1).split(",")
    assert IMAGES[image][1] in installed, f"image {image} does not install .[{IMAGES[image][1]}]"
    assert set(installed) <= set(extras), f"unknown extras {set(installed) - set(extras)}"


@pytest.mark.parametrize("image", IMAGES)
def test_copied_sources_exist(image: str) -> None:
    for stage in load(image):
        for copy in stage.all("COPY"):
            words = copy.split()
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


@pytest.mark.parametrize("image", IMAGES)
def test_lock_pins_satisfy_the_extras_the_image_installs(image: str) -> None:
    pins = {}
    for line in (REPO / "images" / image / "requirements.lock").read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            name, version = line.split("==")
            pins[name] = version
    project = PYPROJECT["project"]
    dependencies = project["dependencies"] + project["optional-dependencies"][IMAGES[image][1]]
    for line in dependencies:
        req = Requirement(line)
        assert req.name in pins, f"{req.name} is not in images/{image}/requirements.lock"
        assert Version(pins[req.name]) in req.specifier, f"{req.name}=={pins[req.name]} violates {req}"


def test_the_trainer_image_needs_no_cuda_base_or_compiler() -> None:
    """torch's PyPI wheels bring CUDA 13.2 as pip packages; a CUDA devel base would double it."""
    stages = load("trainer")
    assert all(not s.base.startswith("nvidia/cuda") for s in stages)
    assert not any("apt-get" in run for s in stages for run in s.all("RUN"))
