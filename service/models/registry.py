"""Every model of the repository, by name: discovery, loading, readiness, lookup.

:class:`ModelRegistry` is the model backend of the app (``service.http.app.create_app``): the routes
reach models only through it (``get``, ``families``, ``ready``, ``json_limit``) and the models'
own interface (metadata, ``infer``/``handle``, ``start`` a generation, statistics). The Ray Serve
engine's backend (``service.engines.ray.RayModels``) is a registry whose models call deployment
handles; the app cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import MANIFEST_NAME, list_model_folders

from ..errors import NotFound
from ..settings import Settings
from ..telemetry.metrics import ServiceMetrics
from .generative import GenerativeModel, is_generative
from .served import ServedModel


def model_folders(repository: Path) -> list[Path]:
    """Model folders: those with a dyt.json, and those with only a config.pbtxt (reported as
    unavailable rather than silently skipped)."""
    if not repository.is_dir():
        raise DytDeployError(f"model repository {repository} is not a folder")
    folders = set(list_model_folders(repository))
    folders |= {p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")
                and (p / "config.pbtxt").is_file() and not (p / MANIFEST_NAME).is_file()}
    return sorted(folders)


def served_model(folder: Path, settings: Settings, metrics: ServiceMetrics) -> ServedModel:
    """The folder as the service serves it: a :class:`GenerativeModel` for a text-generation export
    (dyt.json task ``text-generation``), else a :class:`ServedModel`."""
    kind = GenerativeModel if is_generative(folder) else ServedModel
    return kind(folder, settings, metrics)


class ModelRegistry:
    """Every model of the repository, by name (discovered at once; loaded by :meth:`load_all`)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.models = {f.name: served_model(f, settings, metrics) for f in model_folders(settings.repository_path)}

    async def load(self) -> None:
        """Load and warm every model (in a worker thread: the event loop keeps answering probes)."""
        await anyio.to_thread.run_sync(self.load_all)

    def load_all(self) -> None:
        """Load and warm every model, one after the other (blocking; run it off the event loop)."""
        for model in self.models.values():
            model.load()

    def start(self) -> None:
        for model in self.models.values():
            model.start_batcher()

    async def close(self) -> None:
        for model in self.models.values():
            await model.close()

    @property
    def ready(self) -> bool:
        """Strict readiness (Triton's default): every model of the repository is ready."""
        return all(m.ready for m in self.models.values())

    def not_ready(self) -> str:
        """Each model that is not ready, with its reason ("" when all are)."""
        return "; ".join(f"{m.name}: {m.reason or m.state}" for m in self.models.values() if not m.ready)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model called ``name`` (404 for an unknown name or a version it does not serve)."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; known: {', '.join(self.models) or '(none)'}")
        if version is not None and model.version is not None and version != model.version:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {model.version}")
        return model

    def json_limit(self, name: str) -> int:
        """The largest all-JSON inference body model ``name`` takes (``max_json_bytes`` for an
        unknown name: its request is answered 404 anyway)."""
        model = self.models.get(name)
        if model is None:
            return min(self.settings.max_json_bytes, self.settings.max_body_bytes)
        return model.json_limit()

    def families(self) -> dict[str, list[ServedModel]]:
        """Models grouped by family, in name order."""
        grouped: dict[str, list[ServedModel]] = {}
        for model in self.models.values():
            if model.manifest:
                grouped.setdefault(model.family, []).append(model)
        return grouped
