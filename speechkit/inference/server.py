"""The local server (serve.py): the deployed handler (code/inference.py) over HTTP, as SageMaker's container serves it.

SageMaker's container contract: GET /ping answers 200 once the model is loaded, POST /invocations takes the request
body with its Content-Type (and Accept) and answers with output_fn's JSON. Refusals are JSON {"error": ...} with the
handler's status (400, 413, 415, 406); a request that finds the queue full is answered 503 with Retry-After. A
small ASGI app (starlette). The handler served is the file deploy.py ships, bundled from speechkit/inference/
(bundle.py) and imported from it, so what answers here is what an endpoint runs. Not part of the bundle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from speechkit.config import ConfigError
from speechkit.inference import bundle

log = logging.getLogger(__name__)


def settings_env(cfg) -> dict:
    """The handler's settings as the environment variables a deployed endpoint gets (deploy.py sets the same)."""
    none = lambda v: "none" if v is None else str(v)  # noqa: E731
    return {"SPEECHKIT_MAX_BODY_MB": str(cfg.max_body_mb), "SPEECHKIT_MAX_AUDIO_S": none(cfg.max_audio_s),
            "SPEECHKIT_CHUNK_LENGTH_S": none(cfg.chunk_length_s),
            "SPEECHKIT_STRIDE_LENGTH_S": none(cfg.stride_length_s), "SPEECHKIT_RESPONSE": cfg.response.value,
            "SPEECHKIT_READ_TIMEOUT_S": str(cfg.read_timeout_s), "SPEECHKIT_INFERENCE_THREADS": str(cfg.threads),
            "SPEECHKIT_QUEUE": str(cfg.queue), "SPEECHKIT_RUNTIME": cfg.runtime.value}


def create_app(model_dir: str) -> Starlette:
    inference = bundle.load()  # code/inference.py, as deploy.py ships it
    try:
        model = inference.model_fn(model_dir)
    except inference.InferenceError as err:  # not a model the handler serves
        raise ConfigError(f"model_dir: {err.message}") from None
    log.info("Loaded %s (%d Hz, runtime %s)", model_dir, model["sampling_rate"], model.get("runtime", "torch"))
    # Requests are decoded and transcribed by a fixed, small set of threads (the rest wait their turn): the model's
    # own intra-op threads use the cores anyway, and every new thread would grow the allocator's arenas, so memory
    # crept up under load with the default pool of 40.
    threads = int(os.environ.get("SPEECHKIT_INFERENCE_THREADS", "2"))
    workers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
    # At most `threads` requests are transcribed and `queue` more wait; the next is told when to come back.
    admitted = Admission(threads, int(os.environ.get("SPEECHKIT_QUEUE", "16")))

    async def ping(request: Request) -> Response:
        return Response(status_code=200)

    async def invocations(request: Request) -> Response:
        limit = inference.max_body_bytes()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:  # refused before reading it
            return _error(inference.InferenceError(f"request body of {declared} bytes is over the limit of {limit} "
                                                   "bytes (SPEECHKIT_MAX_BODY_MB / inference.max_body_mb)", 413))
        body = bytearray()

        async def receive() -> bool:  # False: over the limit
            async for part in request.stream():
                body.extend(part)
                if len(body) > limit:
                    return False
            return True

        timeout = float(os.environ.get("SPEECHKIT_READ_TIMEOUT_S", "30"))
        try:
            within_limit = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:  # a slow (or stalled) sender does not hold a worker forever
            return _error(inference.InferenceError(f"request body not received within {timeout:g} s "
                                                   "(SPEECHKIT_READ_TIMEOUT_S / inference.read_timeout_s)", 408))
        if not within_limit:
            return _error(inference.InferenceError(f"request body is over the limit of {limit} bytes "
                                                   "(SPEECHKIT_MAX_BODY_MB / inference.max_body_mb)", 413))
        if not admitted.enter():
            retry = admitted.retry_after_s()
            return JSONResponse({"error": f"busy: {admitted.waiting} requests are waiting (inference.queue); "
                                          f"retry in {retry} s"}, status_code=503,
                                headers={"Retry-After": str(retry)})
        started = time.perf_counter()
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                workers, inference.transform, bytes(body), request.headers.get("content-type"),
                request.headers.get("accept"), model)
        except inference.InferenceError as err:
            return _error(err)
        except Exception:  # a fault of the server, not of the request: logged in full under an id the client gets
            fault = uuid.uuid4().hex[:12]
            log.exception("request %s failed inside the server", fault)
            return JSONResponse({"error": f"internal error {fault}: the server's log has the details"},
                                status_code=500)
        finally:
            admitted.leave(time.perf_counter() - started)
        return Response(out, media_type="application/json")

    return Starlette(routes=[Route("/ping", ping, methods=["GET"]),
                             Route("/invocations", invocations, methods=["POST"])])


class Admission:
    """Requests in the server: `threads` at work and up to `queue` waiting. Touched from the event loop only, so no
    lock. Retry-After is the time the requests ahead are expected to take, from the mean service time so far."""

    def __init__(self, threads: int, queue: int):
        self.threads, self.queue, self.inside = threads, queue, 0
        self.mean_s = 1.0  # until a request has been timed

    @property
    def waiting(self) -> int:
        return max(self.inside - self.threads, 0)

    def enter(self) -> bool:
        if self.inside >= self.threads + self.queue:
            return False
        self.inside += 1
        return True

    def leave(self, seconds: float) -> None:
        self.inside -= 1
        self.mean_s = 0.8 * self.mean_s + 0.2 * seconds

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.mean_s * (self.waiting + self.threads) / self.threads))


def _error(err) -> Response:
    """`err`: the handler's InferenceError."""
    return JSONResponse({"error": err.message}, status_code=err.status_code)
