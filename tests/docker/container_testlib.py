"""Helpers of the container test: podman through subprocess, the image build, a served container.

Podman runs with the containers.conf that scripts/container_setup.sh writes (runc, ulimits this
host allows) and never touches a container it did not start: every stop and removal goes by id.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "container-test"
SETUP_SCRIPT = ROOT / "scripts" / "container_setup.sh"
WHEELHOUSE = ROOT / "docker" / "wheelhouse"
IMAGE = "localhost/dyt-deploy:test"
TORCH = "torch==2.13.0"
SKIP_STATUS = 77  # container_setup.sh: this environment cannot run the test

# pip errors in a build log that mean "no network", not "broken Dockerfile"
NETWORK_ERRORS = re.compile(r"Temporary failure in name resolution|Network is unreachable|Could not resolve host|"
                            r"Failed to establish a new connection|Connection timed out")


@dataclass
class Podman:
    """``podman`` with the test's environment; ``run`` raises with podman's output on failure."""

    env: dict[str, str]
    base_image: str
    facts: dict[str, object] = field(default_factory=dict)  # what the run measured, for the summary

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done


def setup_podman() -> Podman:
    """Run scripts/container_setup.sh; skip (with its reason) where podman cannot run here."""
    try:
        done = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as err:
        pytest.skip(f"container test unavailable: {err}")
    if done.returncode == SKIP_STATUS:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, f"container_setup.sh failed ({done.returncode}):\n{done.stderr[-3000:]}"
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Podman({**os.environ, "CONTAINERS_CONF": values["CONTAINERS_CONF"]}, values["BASE_IMAGE"])


def torch_wheel() -> Path | None:
    """The CPU build of torch in docker/wheelhouse (fetched with this environment's pip when absent):
    the build then needs no PyTorch index. None when pip finds no CPU build here."""
    def found() -> Path | None:
        return next(iter(sorted(WHEELHOUSE.glob(f"{TORCH.replace('==', '-')}+cpu-cp311-*.whl"))), None)

    if found() is None:
        subprocess.run([sys.executable, "-m", "pip", "download",
                        TORCH, "--no-deps", "--python-version", "3.11", "--only-binary=:all:", "-q",
                        "-d", str(WHEELHOUSE)], capture_output=True, timeout=1200)
    return found()


def ca_bundle() -> Path | None:
    """The host's CA bundle (with the certificate of a TLS-intercepting proxy, where there is one)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_args(podman: Podman, dockerfile: str, tag: str) -> list[str]:
    """podman build arguments: docker format (OCI images drop HEALTHCHECK), the local base, the
    wheelhouse's torch instead of the PyTorch index, the CA bundle as a secret."""
    args = ["build", "--format", "docker", "-f", dockerfile, "-t", tag,
            "--build-arg", f"BASE_IMAGE={podman.base_image}"]
    if torch_wheel() is not None:
        args += ["--build-arg", "TORCH_INDEX_URL="]
    bundle = ca_bundle()
    if bundle is not None:
        args += ["--secret", f"id=ca_bundle,src={bundle}"]
    return [*args, str(ROOT)]


def build_image(podman: Podman, dockerfile: str = "docker/Dockerfile", tag: str = IMAGE) -> str:
    """Build ``dockerfile``; records the time, the steps taken from the cache, and the image size."""
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "build.log"
    previous = podman.run("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    start = time.perf_counter()
    done = podman.run(*build_args(podman, dockerfile, tag), check=False, timeout=3600)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        if NETWORK_ERRORS.search(done.stdout + done.stderr):
            pytest.skip(f"container test unavailable: the image build could not reach the network (see {log})")
        raise AssertionError(f"podman build failed ({done.returncode}), log in {log}:\n{done.stderr[-4000:]}")
    steps = len(re.findall(r"^\[\d+/\d+\] STEP ", done.stdout, re.M))
    cached = done.stdout.count("--> Using cache")
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    current = podman.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if previous and previous != current:  # the image this tag named before (about 1 GB): no longer needed
        podman.run("rmi", previous, check=False)
    podman.facts.update(build_seconds=round(seconds, 1), build_steps=steps, cached_steps=cached, image_bytes=size)
    return tag


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running container: its id and the loopback URL of its port 8000."""

    id: str
    url: str


def start_container(podman: Podman, image: str, repository: Path, *serve_args: str) -> Served:
    """``podman run -d`` with the repository mounted read-only at /models on a loopback port."""
    port = free_port()
    container_id = podman.run("run", "-d", "-p", f"127.0.0.1:{port}:8000", "-v", f"{repository}:/models:ro",
                              image, *serve_args).stdout.strip().splitlines()[-1]
    return Served(container_id, f"http://127.0.0.1:{port}")


def wait_ready(podman: Podman, served: Served, timeout: float = 180) -> float:
    """Poll the readiness route until 200; fail with the container's log if it exits or times out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if httpx.get(f"{served.url}/v2/health/ready", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        state = podman.run("inspect", "--format", "{{.State.Status}}", served.id, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            break
        time.sleep(0.5)
    logs = podman.run("logs", served.id, check=False)
    raise AssertionError(f"container {served.id[:12]} not ready ({state}):\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def stop_and_remove(podman: Podman, container_id: str) -> None:
    """Stop (SIGTERM, then SIGKILL after 10 s) and remove one container, by its id."""
    podman.run("stop", "-t", "10", container_id, check=False, timeout=60)
    podman.run("rm", "-f", container_id, check=False, timeout=60)


def compose(podman: Podman, project: str, env: dict[str, str], *args: str,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """podman-compose on docker/compose.yaml as project ``project``."""
    binary = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(binary).is_file():
        pytest.skip("podman-compose is not installed (pip install podman-compose, in the test extra)")
    command = [binary, "-f", str(ROOT / "docker" / "compose.yaml"), "-p", project, *args]
    return subprocess.run(command, env={**podman.env, **env}, capture_output=True, text=True, timeout=timeout)


def json_infer(url: str, model: str, feed: dict[str, object], datatypes: Sequence[str]) -> dict:
    """One JSON inference request (the Open Inference Protocol's plain form)."""
    body = {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}
                       for (name, array), datatype in zip(feed.items(), datatypes, strict=True)]}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()
