"""The Dockerfiles (deploy/Dockerfile for the workers, deploy/triton/Dockerfile for Triton), checked structurally:
no Docker engine on these machines. hadolint finds nothing in them (its rules ignored inline, with the reason); what
they copy exists and passes their .dockerignore; the workers' image is slim and runs unprivileged with ``driftloop``
as its entrypoint; its environment is valid settings.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.paths import REPO_ROOT
from tests.deploy.support import DEPLOY, ROLE_COMMANDS, check_settings_env, health_port, require_tool

pytestmark = pytest.mark.unit

WORKERS_DOCKERFILE = DEPLOY / "Dockerfile"
TRITON_DOCKERFILE = DEPLOY / "triton" / "Dockerfile"
TRITON_BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
KEPT_OUT_OF_THE_IMAGE = (
    ".git/HEAD",
    ".venv/bin/python",
    ".venv-serving/bin/python",
    ".stack/feast/registry.db",
    "tests/conftest.py",
    "triton_repo/classifier/config.pbtxt",
    "driftloop/__pycache__/x.pyc",
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form"
        return value


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path} ends with a continuation line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with its FROM)."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", instruction.args):
                env[match.group(1)] = match.group(2)
    return env


def args_of(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args)


def dockerignore(dockerfile: Path) -> list[str]:
    """Patterns of ``<Dockerfile>.dockerignore`` (BuildKit reads it instead of the context's .dockerignore)."""
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; ``!`` re-includes."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = fnmatch.translate(body).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if body.startswith("**/"):
            regex = r"(?:.*/)?" + fnmatch.translate(body[3:])
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "dockerfile", [WORKERS_DOCKERFILE, TRITON_DOCKERFILE], ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [require_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def workers() -> list[Instruction]:
    return parse(WORKERS_DOCKERFILE)


def test_workers_image_is_a_slim_multi_stage_build(workers) -> None:
    build, final = stages(workers)
    python_version = args_of(workers)["PYTHON_VERSION"]

    assert build[0].args.startswith("python:${PYTHON_VERSION}-slim") and build[0].args.endswith(" AS build")
    assert final[0].args == "python:${PYTHON_VERSION}-slim-bookworm"
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={python_version}" in requires
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/driftloop /opt/driftloop"], "only the virtual environment crosses over"
    assert not any("build-essential" in i.args for i in final), "no compiler in the final image"


def test_workers_image_runs_driftloop_as_an_unprivileged_user(workers) -> None:
    final = stages(workers)[-1]
    users = [i.args for i in final if i.keyword == "USER"]

    assert users == ["10001:10001"]
    assert [i for i in final if i.keyword == "ENTRYPOINT"][-1].exec_form() == ["driftloop"]
    assert [i for i in final if i.keyword == "CMD"][-1].exec_form() == ["--help"]
    created = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "--uid 10001" in created and "chown -R 10001:10001 /var/lib/driftloop /models" in created


def test_workers_image_exposes_every_roles_health_port(workers) -> None:
    exposed = {int(port) for i in workers if i.keyword == "EXPOSE" for port in i.args.split()}

    assert exposed == {health_port(role) for role in ROLE_COMMANDS}


def test_workers_image_environment_is_valid_settings(workers, tmp_path: Path) -> None:
    env = env_of(stages(workers)[-1])

    settings = check_settings_env(env, tmp_path)

    assert env["HF_HUB_OFFLINE"] == "1", "no model is downloaded at run time"
    assert str(settings.triton.model_repository) == "/models"
    for path in (
        settings.feast_dir,
        settings.workers.faust_data_dir,
        settings.monitoring.reports_dir,
        settings.stack.run_dir,
    ):
        assert str(path).startswith("/var/lib/driftloop/"), path


def test_workers_image_copies_what_pip_install_needs_and_nothing_else(workers) -> None:
    patterns = dockerignore(WORKERS_DOCKERFILE)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]

    for instruction in stages(workers)[0]:
        if instruction.keyword == "COPY":
            *sources, _ = instruction.args.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), source
                if source != ".":
                    assert not ignored(source, patterns), f"{source} is excluded by the .dockerignore"
    for package in packages:
        assert not ignored(f"{package}/__init__.py", patterns), package
    for kept_out in KEPT_OUT_OF_THE_IMAGE:
        assert ignored(kept_out, patterns), kept_out


def test_cpu_torch_by_default_cuda_on_request(workers) -> None:
    build = stages(workers)[0]
    index = args_of(build)["TORCH_INDEX_URL"]

    assert index.endswith("/whl/cpu")
    assert any(i.keyword == "RUN" and '[ -n "${TORCH_INDEX_URL}" ]' in i.args for i in build)


def test_triton_image_is_nvidias_with_the_serving_requirements() -> None:
    instructions = parse(TRITON_DOCKERFILE)
    patterns = dockerignore(TRITON_DOCKERFILE)

    assert args_of(instructions)["TRITON_IMAGE"] == TRITON_BASE_IMAGE
    assert [i.args for i in instructions if i.keyword == "FROM"] == ["${TRITON_IMAGE}"]
    (copy,) = [i for i in instructions if i.keyword == "COPY"]
    source = copy.args.split()[0]
    assert (REPO_ROOT / source).is_file() and not ignored(source, patterns)
    requirements = (REPO_ROOT / source).read_text()
    assert "numpy>=1.26,<2" in requirements, "the bundled python backend needs numpy < 2"
    assert "nvidia-pytriton" not in requirements, "the container has its own tritonserver"
    assert [i.args for i in instructions if i.keyword == "USER"] == ["1000:1000"]
    command = [i for i in instructions if i.keyword == "CMD"][-1].exec_form()
    assert command[0] == "tritonserver" and "--model-control-mode=explicit" in command
    assert ignored("driftloop/cli.py", patterns) and ignored(".venv/bin/python", patterns)


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!src/", "**/__pycache__", "src/data/"]

    assert ignored("README.md", patterns)
    assert not ignored("src/a.py", patterns)
    assert ignored("src/pkg/__pycache__/a.pyc", patterns)
    assert ignored("src/data/x.parquet", patterns)
    assert not ignored("src/database.py", patterns)
