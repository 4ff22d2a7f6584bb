"""The HTTP side of ``pengi-kit serve``: an ASGI app (Starlette, run by uvicorn) that speaks
OpenAI's API and hands each request to the :class:`~pengi_kit.server.scheduler.Scheduler`.

Every error reaches the client in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``) with a 4xx status and a message a person can act on; a failure of the server is a
500 whose details go to the server's log, never to the client.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from pengi_kit.api import Pengi
from pengi_kit.data.conversations import InlineAudio
from pengi_kit.errors import AudioError, PengiKitError
from pengi_kit.server.metrics import Metrics
from pengi_kit.server.protocol import (ApiError, ChatRequest, check_single_question, chunk, completion,
                                       completion_id, decode_base64, parse_chat, usage)
from pengi_kit.server.scheduler import Job, Scheduler, _internal

MAX_BODY = 32 * 2**20


class Server:
    """The served model and its options; :attr:`app` is the ASGI app."""

    def __init__(self, pengi: Pengi, name: str, *, api_key: str | None = None, max_body: int = MAX_BODY,
                 allow_local_files: bool = False, max_batch: int = 32, max_queue: int = 256, max_length: int = 2048,
                 ready: str | None = None) -> None:
        self.pengi, self.name, self.api_key, self.max_body = pengi, name, api_key, max_body
        self.allow_local_files, self.ready, self.created = allow_local_files, ready, int(time.time())
        self.metrics = Metrics()
        self.scheduler = (Scheduler(pengi, max_batch, max_queue, max_length, self.metrics) if pengi.generates
                          else None)
        self.embedding = asyncio.Lock()  # embeddings run one request at a time, in a worker thread
        routes = [Route("/health", self._wrap(self.health, auth=False)),
                  Route("/metrics", self._wrap(self.render_metrics)),
                  Route("/v1/models", self._wrap(self.models)),
                  Route("/v1/chat/completions", self._wrap(self.chat), methods=["POST"]),
                  Route("/v1/embeddings", self._wrap(self.embeddings), methods=["POST"])]
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={HTTPException: self._http_error})

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.scheduler is not None:
            self.scheduler.start()
        if self.ready:
            print(self.ready, file=sys.stderr, flush=True)
        yield
        if self.scheduler is not None:  # uvicorn has drained the requests in flight
            await run_in_threadpool(self.scheduler.close)

    # ------------------------------------------------------------------ plumbing
    def _wrap(self, handler: Callable[[Request], Awaitable[Response]], auth: bool = True) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            start = time.monotonic()
            try:
                if auth:
                    self._authorize(request)
                response = await handler(request)
            except ApiError as error:
                response = _error(error)
            except Exception as exc:  # noqa: BLE001 - the log gets the traceback, the client one line
                response = _error(_internal(exc))
            if not isinstance(response, StreamingResponse):  # a stream counts itself when it ends
                self.metrics.request(request.url.path, response.status_code, time.monotonic() - start)
            return response

        return endpoint

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {request.url.path}: this server has /v1/chat/completions, /v1/embeddings, "
                        "/v1/models, /health and /metrics",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc))
        self.metrics.request("other", status, 0.0)
        return _error(ApiError(status, message, code="not_found" if status == 404 else None))

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer <key>' (the key the server was "
                           "started with, --api-key)", code="missing_api_key")
        if not hmac.compare_digest(given[7:].strip().encode(), self.api_key.encode()):
            raise ApiError(401, "the API key is wrong: send the key the server was started with (--api-key)",
                           code="invalid_api_key")

    async def _json(self, request: Request) -> Any:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise self._too_large(int(length))
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_body:
                raise self._too_large(len(body))
        return await run_in_threadpool(_parse_json, bytes(body))  # megabytes of base64: off the event loop

    def _too_large(self, size: int) -> ApiError:
        return ApiError(413, f"the body has {size} bytes or more and this server takes {self.max_body} (--max-body): "
                        "send shorter audio, or start the server with a larger --max-body", code="body_too_large")

    def _check_model(self, model: Any) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist here: this server serves {self.name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")

    # ------------------------------------------------------------------ routes
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name})

    async def render_metrics(self, request: Request) -> Response:
        queued, running = (self.scheduler.queued, self.scheduler.running) if self.scheduler else (0, 0)
        return PlainTextResponse(self.metrics.render(queued, running), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                                         "owned_by": "pengi-kit"}]})

    async def chat(self, request: Request) -> Response:
        start = time.monotonic()
        body = await self._json(request)
        parsed = await run_in_threadpool(parse_chat, body, self.allow_local_files)  # decodes the base64
        self._check_model(parsed.model)
        if self.scheduler is None:
            raise ApiError(400, "this model (CLAP) embeds audio and text but generates no text: use /v1/embeddings",
                           param="model")
        chat_layout = self.pengi.model.layout == "chat"
        if not chat_layout:
            check_single_question(parsed)
        try:
            cfg = self.pengi.decoding(**parsed.decoding)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"decoding options: {exc}", param=_named(exc, parsed.decoding)) from None
        waves, digests = await run_in_threadpool(self._clips, parsed)
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        job = Job(waves, digests, parsed.messages if chat_layout else parsed.prompt(), cfg,
                  _threadsafe(asyncio.get_running_loop(), events), parsed.n, parsed.stream)
        self.scheduler.submit(job)
        watcher = asyncio.ensure_future(self._watch(request, job, events))
        streaming = False
        try:
            first = await events.get()
            if first[0] == "error":
                raise first[1]
            if first[0] == "gone":
                return Response(status_code=499)
            cid, prompt_tokens = completion_id(), first[1]
            headers = {"x-pengi-kit-ignored": ", ".join(parsed.ignored)} if parsed.ignored else {}
            if parsed.stream:
                streaming = True  # the stream's generator stops the watcher when it ends
                return StreamingResponse(self._events(job, events, cid, parsed, prompt_tokens, start, watcher),
                                         media_type="text/event-stream", headers=headers)
            choices: list[dict[str, Any] | None] = [None] * job.n
            while any(c is None for c in choices):
                event = await events.get()
                if event[0] == "error":
                    raise event[1]
                if event[0] == "gone":
                    return Response(status_code=499)
                if event[0] == "end":
                    _, i, text, reason, tokens = event
                    choices[i] = {"text": text, "finish_reason": reason, "tokens": tokens}
            return JSONResponse(completion(cid, self.name, choices, prompt_tokens), headers=headers)
        finally:
            if not streaming:
                watcher.cancel()

    async def _watch(self, request: Request, job: Job, events: asyncio.Queue) -> None:
        """A client that goes away frees its rows at once (a stream's too, while it waits for text)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.scheduler.cancel(job)
        events.put_nowait(("gone",))

    async def _events(self, job: Job, events: asyncio.Queue, cid: str, parsed: ChatRequest, prompt_tokens: int,
                      start: float, watcher: asyncio.Future) -> AsyncIterator[str]:
        """Server-sent events: each choice's role, its text as it grows, its end; usage; [DONE]."""
        sent, ended, tokens, status = [""] * job.n, 0, 0, 200
        try:
            for i in range(job.n):
                yield _sse(chunk(cid, self.name, i, {"role": "assistant", "content": ""}))
            while ended < job.n:
                event = await events.get()
                if event[0] == "gone":
                    return
                if event[0] == "error":
                    status = event[1].status
                    yield _sse(event[1].body())
                    break
                if event[0] in ("text", "end"):
                    i, text = event[1], event[2]
                    if text.startswith(sent[i]) and len(text) > len(sent[i]):
                        yield _sse(chunk(cid, self.name, i, {"content": text[len(sent[i]):]}))
                        sent[i] = text
                if event[0] == "end":
                    ended, tokens = ended + 1, tokens + event[4]
                    yield _sse(chunk(cid, self.name, event[1], finish_reason=event[3]))
            if status == 200 and parsed.include_usage:
                yield _sse(chunk(cid, self.name, usage_=usage(prompt_tokens, tokens)))
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            if ended < job.n:  # the client went away (or an error): the rows leave
                self.scheduler.cancel(job)
                status = 499 if status == 200 else status
            self.metrics.request("/v1/chat/completions", status, time.monotonic() - start)

    def _clips(self, parsed: ChatRequest) -> tuple[list[torch.Tensor], tuple[str, ...]]:
        """Each clip's waveform as ``generate`` reads it (resampled, cut or padded to the model's
        clip), and a hash of its bytes (a clip is encoded once)."""
        waves, digests = [], []
        for k, clip in enumerate(parsed.clips, start=1):
            if isinstance(clip, InlineAudio):
                digest, source = hashlib.sha256(clip.data).hexdigest(), io.BytesIO(clip.data)
            else:
                stat = Path(clip).stat()
                digest, source = f"{clip}:{stat.st_mtime_ns}:{stat.st_size}", clip
            try:
                waves.append(self.pengi._waveform(source, None))
            except (AudioError, ValueError) as exc:
                raise ApiError(400, f"clip {k} of the request is not audio this server can read ({exc}); send the "
                               "bytes of a wav, mp3, flac or ogg file", param="messages", code="invalid_audio") from None
            digests.append(digest)
        return waves, tuple(digests)

    async def embeddings(self, request: Request) -> Response:
        body = await self._json(request)
        if not isinstance(body, dict) or "input" not in body:
            raise ApiError(400, "the body must be a JSON object with 'model' and 'input'", param="input")
        self._check_model(body.get("model"))
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not items:
            raise ApiError(400, "input is empty: give a text, a list of texts, or input_audio parts", param="input")
        texts, clips = {}, {}
        for i, item in enumerate(items):
            if isinstance(item, str):
                texts[i] = item
            elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                texts[i] = item["text"]
            elif isinstance(item, dict) and item.get("type") == "input_audio" and isinstance(item.get("input_audio"), dict):
                clips[i] = decode_base64(item["input_audio"].get("data"), f"input[{i}].input_audio.data")
            else:
                raise ApiError(400, f"input[{i}]: expected a string, {{\"type\": \"text\", \"text\": ...}} or "
                               "{\"type\": \"input_audio\", \"input_audio\": {\"data\": <base64>, \"format\": \"wav\"}}"
                               " (token ids are not taken)", param="input")
        async with self.embedding:
            vectors = await run_in_threadpool(self._embed, texts, clips)
        data = [{"object": "embedding", "index": i, "embedding": _encode(vectors[i], fmt)} for i in range(len(items))]
        return JSONResponse({"object": "list", "data": data, "model": self.name, "usage": usage(0, 0)})

    def _embed(self, texts: dict[int, str], clips: dict[int, bytes]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        try:
            if texts:
                out.update(zip(texts, self.pengi.embed_text(list(texts.values()))))
            if clips:
                failures: list[Exception] = []
                keys = list(clips)
                vectors = self.pengi.embed_audio([io.BytesIO(b) for b in clips.values()],
                                                 on_error=lambda item, exc: failures.append(exc))
                if failures:
                    bad = next(k for k, v in zip(keys, vectors) if torch.isnan(v).any())
                    raise ApiError(400, f"input[{bad}] is not audio this server can read ({failures[0]}); send the "
                                   "bytes of a wav, mp3, flac or ogg file", param="input", code="invalid_audio")
                out.update(zip(keys, vectors))
        except (PengiKitError, ValueError) as exc:
            raise ApiError(400, str(exc), param="input") from None
        return out


def _threadsafe(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[tuple[Any, ...]], None]:
    """Events from the decoder's thread into ``events`` (dropped once the loop has closed)."""
    def notify(event: tuple[Any, ...]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:
            pass

    return notify


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc}); send a JSON object") from None


def _named(exc: Exception, options: dict[str, Any]) -> str | None:
    """The option an error of :class:`~pengi_kit.decoding.Decoding` names."""
    return next((name for name in options if name in str(exc)), None)


def _encode(vector: torch.Tensor, fmt: str) -> Any:
    if fmt == "base64":  # what OpenAI's client asks for by default: little-endian float32
        return base64.b64encode(vector.float().numpy().astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _error(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


