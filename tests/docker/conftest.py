"""Fixtures of the container test (marker ``docker``, run by ``make test-docker``): podman with a
locally made Debian bookworm base, the CPU image built from docker/Dockerfile, a small model
repository, and a running container of the image serving it on a loopback port.

Tests marked ``docker`` build an image (minutes) and need root and podman: they are skipped unless
the run selects them with ``-m docker``; ``make test`` deselects them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_testlib import (
    Podman,
    Served,
    build_image,
    setup_podman,
    start_container,
    stop_and_remove,
    wait_ready,
)

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner

MODELS = ("vit-layernorm", "vit-dyt", "bert-dyt")
_facts: dict[str, object] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "docker" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="container test: select it with -m docker (make test-docker)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the note needs: build time (and how many steps came from the cache), image size."""
    if _facts:
        terminalreporter.write_sep("-", "container test")
        for key, value in _facts.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def podman() -> Podman:
    return setup_podman()


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    tag = build_image(podman)
    _facts.update(podman.facts, image_mb=round(podman.facts["image_bytes"] / 1e6))
    return tag


def make_repository(folder: Path) -> Path:
    """repo/vit-layernorm, repo/vit-dyt (depth-1 ViTs on 32x32 images) and repo/bert-dyt (INT64
    inputs), readable by the image's non-root user."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    for norm in ("layernorm", "dyt"):
        save_checkpoint(create_model("vit_tiny", norm=norm, depth=1, img_size=32), folder / f"vit-{norm}.pt")
        export_onnx(folder / f"vit-{norm}.pt", repository=folder / "repo", name=f"vit-{norm}")
    save_checkpoint(create_model("bert_tiny", norm="dyt", depth=1), folder / "bert-dyt.pt")
    export_onnx(folder / "bert-dyt.pt", repository=folder / "repo", name="bert-dyt")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder / "repo"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the model.pt files and repo/ exported from them in this process."""
    folder = tmp_path_factory.mktemp("container-models")
    make_repository(folder)
    return folder


@pytest.fixture(scope="session")
def repository(checkpoints: Path) -> Path:
    return checkpoints / "repo"


@pytest.fixture(scope="session")
def reference(repository: Path) -> Iterator[dict[str, OnnxRuntimeRunner]]:
    """In-process runners of the repository's models: the answers the container must give."""
    runners = {name: OnnxRuntimeRunner(repository / name / "1" / "model.onnx", threads=1) for name in MODELS}
    for runner in runners.values():
        runner.activate()
    yield runners
    for runner in runners.values():
        runner.deactivate()


@pytest.fixture(scope="session")
def served(podman: Podman, image: str, repository: Path) -> Iterator[Served]:
    """The image's default command (dyt-serve on /models) plus ``--threads 1``, on a loopback port."""
    running = start_container(podman, image, repository, "--threads", "1")
    try:
        _facts["ready_after_s"] = round(wait_ready(podman, running), 1)
        yield running
    finally:
        stop_and_remove(podman, running.id)


@pytest.fixture
def workdir(tmp_path: Path, checkpoints: Path) -> Path:
    """A folder the image's user (uid 10001) can write, with the model.pt files in it."""
    for checkpoint in checkpoints.glob("*.pt"):
        shutil.copy(checkpoint, tmp_path / checkpoint.name)
    for path in [tmp_path, *tmp_path.iterdir()]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    return tmp_path
