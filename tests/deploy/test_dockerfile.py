"""The Dockerfiles (deploy/Dockerfile for the workers, deploy/triton/Dockerfile for Triton), checked structurally:
no Docker engine on these machines. hadolint finds nothing in them (its rules ignored inline, with the reason); what
they copy exists and passes their .dockerignore and the repository's; the workers' image is slim and runs
unprivileged with ``driftloop`` as its entrypoint; its environment is valid settings. Every Python package goes in
through pip --require-hashes from the lock files in deploy/serving, which pin and hash everything, agree with
pyproject.toml and requirements.in, and agree with each other.
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
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from foundation.paths import REPO_ROOT
from tests.deploy.support import DEPLOY, ROLE_COMMANDS, check_settings_env, health_port, require_tool

pytestmark = pytest.mark.unit

WORKERS_DOCKERFILE = DEPLOY / "Dockerfile"
TRITON_DOCKERFILE = DEPLOY / "triton" / "Dockerfile"
TRITON_BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
SERVING = DEPLOY / "serving"
SERVING_LOCK = SERVING / "requirements.txt"
WORKERS_LOCK = SERVING / "requirements-workers.txt"
TORCH_INPUT = SERVING / "requirements-torch.in"
TORCH_CUDA_LOCK = SERVING / "requirements-torch-cuda.txt"
TORCH_CPU_LOCK = SERVING / "requirements-torch-cpu.txt"
#: Python versions the serving lock is for: the Triton image's (Ubuntu 22.04) and the local .venv-serving's.
SERVING_PYTHONS = ("3.10", "3.11")
#: Packages that only PyPI's CUDA build of torch needs: never in the workers' lock (the CPU image has none of them).
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
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


def dockerignore(dockerfile: Path | None) -> list[str]:
    """Patterns of ``<Dockerfile>.dockerignore`` (BuildKit reads it instead of the context's .dockerignore); None:
    the repository's own .dockerignore."""
    path = (
        REPO_ROOT / ".dockerignore" if dockerfile is None else dockerfile.with_name(dockerfile.name + ".dockerignore")
    )
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class Pin:
    """One entry of a lock file: ``name==version ; marker`` and its hashes."""

    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        (specifier,) = self.requirement.specifier
        assert specifier.operator == "==", self.requirement
        return specifier.version

    def applies(self, python: str) -> bool:
        """Whether its marker holds on linux x86_64 with Python ``python``."""
        marker = self.requirement.marker
        env = default_environment() | {
            "python_version": python,
            "python_full_version": f"{python}.0",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
        }
        return marker is None or marker.evaluate(env)


def read_lock(path: Path) -> list[Pin]:
    """The entries of a requirements file (continuations joined, comments and options dropped)."""
    pins, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line or line.startswith("-"):
            continue
        spec, *hashes = re.split(r"\s+--hash=", line)
        pins.append(Pin(Requirement(spec), tuple(hashes)))
    return pins


def read_requirements(path: Path) -> list[Requirement]:
    return [pin.requirement for pin in read_lock(path)]


def pip_installs(instructions: list[Instruction]) -> list[str]:
    """Every ``pip install`` command of the RUN instructions."""
    runs = " ; ".join(i.args for i in instructions if i.keyword == "RUN")
    return [m.group(0) for m in re.finditer(r"pip install[^;&|]*", runs)]


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

    # The base by tag unless a release passes it by digest (PYTHON_IMAGE=python:...@sha256:...).
    assert args_of(workers)["PYTHON_IMAGE"] == "python:${PYTHON_VERSION}-slim-bookworm"
    assert build[0].args == "${PYTHON_IMAGE} AS build"
    assert final[0].args == "${PYTHON_IMAGE}"
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


@pytest.mark.parametrize("own", [True, False], ids=["Dockerfile.dockerignore", "repository .dockerignore"])
def test_workers_image_copies_what_pip_install_needs_and_nothing_else(workers, own: bool) -> None:
    patterns = dockerignore(WORKERS_DOCKERFILE if own else None)
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
    for kept_out in (*KEPT_OUT_OF_THE_IMAGE, ".env", "deploy/k8s/secrets.example.yaml", ".stack/kafka/tls/ca.key"):
        assert ignored(kept_out, patterns), kept_out


def test_the_repository_dockerignore_lets_the_triton_image_build() -> None:
    instructions = parse(TRITON_DOCKERFILE)
    patterns = dockerignore(None)

    for instruction in instructions:
        if instruction.keyword == "COPY":
            *sources, _ = instruction.args.split()
            assert all(not ignored(source, patterns) for source in sources), sources


# Hash-locked requirements.


@pytest.mark.parametrize(
    "dockerfile", [WORKERS_DOCKERFILE, TRITON_DOCKERFILE], ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_package_is_installed_from_a_lock_with_its_hash(dockerfile: Path) -> None:
    installs = pip_installs(parse(dockerfile))

    assert installs
    for install in installs:
        if install.split()[-1] == ".":  # driftloop itself, from the context, with the locked setuptools
            assert "--no-deps" in install and "--no-build-isolation" in install, install
            continue
        if "--require-hashes" not in install:  # the CPU torch lock before its hashes are taken (pinned all the same)
            assert TORCH_CPU_LOCK.name in install and not read_lock(TORCH_CPU_LOCK)[0].hashes, install
        assert "--no-deps" in install, install
        assert re.findall(r"-r\s+\S*requirements[-\w.]*\.txt", install), install


@pytest.mark.parametrize("lock", [SERVING_LOCK, WORKERS_LOCK, TORCH_CUDA_LOCK], ids=lambda p: p.name)
def test_lock_files_pin_and_hash_every_requirement(lock: Path) -> None:
    pins = read_lock(lock)

    assert pins
    for pin in pins:
        assert pin.version and pin.hashes, pin.requirement
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in pin.hashes), pin.requirement
    header = "\n".join(line for line in lock.read_text().splitlines()[:3])
    assert "uv pip compile" in header and "--generate-hashes" in header, "the command that locks it, at the top"


def test_the_cpu_torch_lock_is_hashed_or_says_how_to_lock_it(workers) -> None:
    (pin,) = read_lock(TORCH_CPU_LOCK)
    (wanted,) = read_requirements(TORCH_INPUT)
    index = args_of(stages(workers)[0])["TORCH_INDEX_URL"]
    text = TORCH_CPU_LOCK.read_text()

    assert pin.name == "torch" and pin.version == f"{wanted.specifier}".removeprefix("==") + "+cpu"
    if not pin.hashes:  # installed pinned but unchecked until it is locked: it must say how
        assert "NOT LOCKED YET" in text
        assert f"uv pip compile {TORCH_INPUT.relative_to(REPO_ROOT)} --no-deps --generate-hashes" in text
        assert f"--index-url {index}" in text


def test_the_workers_locks_hold_pyprojects_dependencies(workers) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    locked = {pin.name: pin for pin in read_lock(WORKERS_LOCK)}
    cuda = {pin.name: pin for pin in read_lock(TORCH_CUDA_LOCK)}
    (torch,) = read_requirements(TORCH_INPUT)
    torch_version = str(torch.specifier).removeprefix("==")

    for dependency in map(Requirement, pyproject["project"]["dependencies"]):
        name = canonicalize_name(dependency.name)
        if name == "torch":
            assert dependency.specifier.contains(torch_version), dependency
            assert cuda["torch"].version == torch_version
            continue
        assert dependency.specifier.contains(locked[name].version, prereleases=True), (dependency, locked[name].version)
    assert not [name for name in locked if CUDA_ONLY.match(name)], "the CPU image must not get CUDA packages"
    for name, pin in cuda.items():
        if name in locked:
            assert pin.version == locked[name].version, f"{name}: the two locks disagree"
    # driftloop itself is built without build isolation, with the locked setuptools.
    (backend,) = map(Requirement, pyproject["build-system"]["requires"])
    assert backend.specifier.contains(locked[canonicalize_name(backend.name)].version)


@pytest.mark.parametrize("python", SERVING_PYTHONS)
def test_the_serving_lock_holds_its_input_for_each_python(python: str) -> None:
    pins = [pin for pin in read_lock(SERVING_LOCK) if pin.applies(python)]
    by_name: dict[str, Pin] = {}
    for pin in pins:
        assert pin.name not in by_name, f"{pin.name} twice for Python {python}"
        by_name[pin.name] = pin

    for wanted in read_requirements(SERVING / "requirements.in"):
        pin = by_name[canonicalize_name(wanted.name)]
        assert wanted.specifier.contains(pin.version), (wanted, pin.version)
    assert not SpecifierSet(">=2").contains(by_name["numpy"].version), "the bundled python backend needs numpy < 2"


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
    assert (REPO_ROOT / source) == SERVING_LOCK and not ignored(source, patterns)
    assert "numpy>=1.26,<2" in (SERVING / "requirements.in").read_text(), "the bundled python backend needs numpy < 2"
    assert "nvidia-pytriton" not in {pin.name for pin in read_lock(SERVING_LOCK)}, "the container has its own server"
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
