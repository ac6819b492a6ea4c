"""The models of the Ray Serve engine as the ingress's app sees them: :class:`RayModels`, the app's
model backend (a :class:`~service.models.registry.ModelRegistry` whose models are deployments),
:class:`RemoteModel` (requests decoded, checked, timed and answered by
:class:`~service.models.served.ServedModel`'s own code; only the run goes to a replica through its
deployment handle), :class:`RemoteGenerativeModel` and :class:`RemoteGenerationRun` (a generation
streamed from a replica, timed and recorded here).

Readiness follows the deployments: each model is asked every ``READY_POLL_S`` (READY when a replica
answers within ``READY_TIMEOUT_S``). Handles are passed in: this module does not import Ray.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from dyt_deploy.errors import DytDeployError

from ..errors import ServiceError, Unavailable
from ..models.generative import GenerationTrack, GenerativeModel, decoder_spec_of
from ..models.registry import ModelRegistry
from ..models.served import UNAVAILABLE, ServedModel
from ..protocol.generate import GenerateRequest, GenerationFailed
from ..protocol.oip import Signature
from ..settings import Settings
from ..telemetry.metrics import ServiceMetrics

READY_TIMEOUT_S = 5.0  # a model whose replicas do not answer within this is not ready
READY_POLL_S = 2.0  # how often the ingress asks each model deployment
FIRST_LOAD_TIMEOUT_S = 600.0  # how long the ingress waits for a model's first answer when it starts
RETRY_AFTER_S = 1


def remote_error(name: str, err: BaseException) -> Exception:
    """What the client is told when a call to model ``name``'s deployment fails: the service's
    own error raised in the replica (a 400, a 503...) as it is; a replica that died, or none
    running, or all busy: 503 with Retry-After (the client may retry); anything else as raised
    (the app answers it as for dyt-serve)."""
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, ServiceError | DytDeployError | GenerationFailed):
        return cause
    kind = type(cause).__name__
    if kind in {"RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
                "BackPressureError", "WorkerCrashedError"} or isinstance(cause, asyncio.TimeoutError):
        return Unavailable(f"model {name!r} has no replica to answer ({kind}); retry", RETRY_AFTER_S)
    return cause if isinstance(cause, Exception) else RuntimeError(str(cause))


# ---------------------------------------------------------------------------------------------
# The models as the ingress's app sees them


class RemoteModel(ServedModel):
    """A model deployment, as the app serves any model: requests are decoded, checked, timed and
    answered here by :class:`ServedModel`'s own code; only the run itself goes to a replica."""

    def __init__(self, name: str, handle: Any, settings: Settings, metrics: ServiceMetrics) -> None:
        super().__init__(settings.repository_path / name, settings, metrics)
        self.deployment = handle  # (ServedModel.handle is the request path)
        self.answers: dict[str, int] = {}  # requests answered, by replica
        self.answered_at = -math.inf  # when a replica last answered a request (monotonic seconds)
        self.described = False

    def load(self) -> None:  # pragma: no cover - the registry's load() describes remote models
        raise TypeError("a remote model is described by RayModels.load, not loaded")

    async def describe(self, timeout_s: float) -> None:
        """Ask a replica what it serves; READY when one answers, else UNAVAILABLE with the reason
        (a model described once keeps its description). A question that waits its turn behind
        requests past ``timeout_s`` while the model is answering them says busy, not gone: the
        model stays as it was."""
        ask = self.deployment.state if self.described else self.deployment.describe  # the manifest once
        try:
            found = await asyncio.wait_for(ask.remote(), timeout_s)
        except Exception as err:
            busy = isinstance(err, asyncio.TimeoutError) and time.monotonic() - self.answered_at < 2 * timeout_s
            if busy and self.described:
                return
            self.state = UNAVAILABLE
            self.reason = f"no replica of model {self.name!r} answered within {timeout_s:g} s ({type(err).__name__})"
            return
        if not self.described:
            self._take(found)
            self.described = True
        self.state, self.reason = found["state"], found["reason"]

    def _take(self, found: dict[str, Any]) -> None:
        self.manifest, self.config, self.version = found["manifest"], found["config"], found["version"]
        self.batching, self.runtime = found["batching"], found["runtime"]
        self.signature = Signature.from_manifest(self.manifest, self.config.max_batch_size)

    def start_batcher(self) -> None:
        """Nothing to start: requests are batched in the replicas."""

    async def close(self) -> None:
        """Nothing to close: the replicas hold the runners."""

    def answered(self, source: str) -> None:
        self.answers[source] = self.answers.get(source, 0) + 1
        self.answered_at = time.monotonic()

    def answered_by(self) -> dict[str, int]:
        return dict(self.answers)

    async def _infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        try:
            outputs, queue_s, infer_s, source = await self.deployment.infer.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None
        self.answered(source)
        return outputs, queue_s, infer_s

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        try:
            return await self.deployment.timed.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None

    async def run_aside(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        self.require_ready()
        try:
            return await self.deployment.run_aside.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None


class RemoteGenerativeModel(RemoteModel, GenerativeModel):
    """A text-generation deployment: generations run in a replica and stream back
    (:class:`RemoteGenerationRun`); admission (``--max-generations``), statistics and metrics are
    the ingress's, as dyt-serve's are its own."""

    def _take(self, found: dict[str, Any]) -> None:
        super()._take(found)
        self.spec = decoder_spec_of(self.manifest)  # a comparison's example feeds

    async def start(self, request: GenerateRequest) -> RemoteGenerationRun:
        self.require_ready()
        if self.running >= self.settings.max_generations:
            raise Unavailable(f"model {self.name!r} is generating for {self.running} requests (limit "
                              f"{self.settings.max_generations}, --max-generations); retry later",
                              self.settings.retry_after_s)
        call = self.deployment.options(stream=True).generate.remote(request)
        try:
            _, prompt_tokens, source = await call.__anext__()
        except Exception as err:  # the request's limits (400), a busy replica (503), none running
            call.cancel()
            raise remote_error(self.name, err) from None
        return RemoteGenerationRun(self, call, prompt_tokens, source)


class RemoteGenerationRun(GenerationTrack):
    """A generation streamed from a replica: its pieces as they come, timed here; :meth:`stop`
    cancels the replica's call (its generation stops after the step under way)."""

    def __init__(self, model: RemoteGenerativeModel, call: Any, prompt_tokens: int, source: str) -> None:
        super().__init__(model, prompt_tokens)
        self.call, self.source, self.held = call, source, ""

    async def pieces(self) -> AsyncIterator[tuple[int, str]]:
        try:
            while self.finish_reason is None:
                try:
                    item = await self.call.__anext__()
                except StopAsyncIteration:
                    item = ("lost",)
                except Exception as err:
                    self.failed = True
                    raise GenerationFailed(f"model {self.model.name!r} failed while generating: "
                                           f"{remote_error(self.model.name, err)}") from None
                if item[0] == "piece":
                    self._tick()
                    self.model.answered_at = time.monotonic()  # a replica at work: busy, not gone
                    yield item[1], item[2]
                elif item[0] == "end":
                    self.held, self.finish_reason = item[1], item[2]
                else:
                    self.failed = True
                    raise GenerationFailed(f"model {self.model.name!r}: its replica ended the stream early")
        finally:
            self.close()

    def rest(self) -> str:
        return self.held

    def stop(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
            self.call.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop()
        if self.finish_reason in ("stop", "length"):
            self.model.answered(self.source)
        self._finish()


class RayModels(ModelRegistry):
    """The app's model backend on Ray Serve: a :class:`RemoteModel` per model deployment."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, handles: dict[str, Any],
                 generative: set[str]) -> None:
        self.settings = settings
        self.models = {name: (RemoteGenerativeModel if name in generative else RemoteModel)(
            name, handle, settings, metrics) for name, handle in handles.items()}
        self.watching: asyncio.Task | None = None

    async def load(self) -> None:
        """Wait for each model's first answer (the deployments start beside the ingress), then
        follow their readiness in the background."""
        await asyncio.gather(*(m.describe(FIRST_LOAD_TIMEOUT_S) for m in self.models.values()))
        self.watching = asyncio.get_running_loop().create_task(self.watch())

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(READY_POLL_S)
            await asyncio.gather(*(m.describe(READY_TIMEOUT_S) for m in self.models.values()))

    def load_all(self) -> None:  # pragma: no cover - see load()
        raise TypeError("RayModels are loaded with await load()")

    async def close(self) -> None:
        if self.watching is not None:
            self.watching.cancel()


