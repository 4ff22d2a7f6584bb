"""OpenAI's API as the server reads and writes it: request bodies checked field by field into
what pengi-kit runs, errors in OpenAI's shape, and the response objects. No torch here.

A field the request omits takes the checkpoint's decoding defaults (its recipe's
``[generate]``, as ``pengi-kit generate`` does), not OpenAI's. The mapping:

- ``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens``;
- ``temperature`` 0 -> greedy; above 0 -> sampling at that temperature (unless the request
  names ``method`` or ``beam_size`` too); ``top_p`` alone -> sampling with that nucleus;
- ``seed``, ``stop`` (a string or a list of them), ``n`` (choice i samples with ``seed + i``);
- pengi-kit's own options as extra fields: the other fields of :class:`pengi_kit.decoding.Decoding`
  but ``compile`` (``method``, ``beam_size``, ``compat``, ``top_k``, ``length_penalty`` ...);
- any other field (OpenAI's ``user``, ``logprobs``, ``tools`` ...: docs/serving.md lists those
  that do not apply) is ignored, and named in the response's ``x-pengi-kit-ignored`` header.
"""
from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pengi_kit.data.conversations import AUDIO, InlineAudio, _Bad, api_messages
from pengi_kit.decoding import Decoding

#: pengi-kit's decoding options a request may set as extra fields
EXTRA_OPTIONS = tuple(f.name for f in fields(Decoding)
                      if f.name not in ("compile", "temperature", "top_p", "seed", "stop"))  # those: OpenAI's own
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
MAX_CHOICES = 16

_ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error"}  # else invalid_request


class ApiError(Exception):
    """A request the server answers with an error: its status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A chat completion request, checked: the messages as the chat layout reads them (each
    content one string with ``<audio>`` where a clip goes), the clips in order, and how to decode."""

    messages: list[dict[str, str]]
    clips: list[InlineAudio | Path]
    decoding: dict[str, Any]  # overrides of the checkpoint's [generate]
    model: str | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    ignored: list[str] = field(default_factory=list)  # fields read and not used (unknown ones too)

    def prompt(self) -> str:
        """The one question of a Pengi-layout request (:func:`check_single_question` passed)."""
        return self.messages[0]["content"].replace(AUDIO, " ").strip()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float | None = None, integer: bool = False) -> Any:
    value = body[name]
    ok = _is_int(value) if integer else (_is_int(value) or isinstance(value, float))
    if not ok or value < low or (high is not None and value > high):
        kind = "an integer" if integer else "a number"
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(400, f"{name} must be {kind} {bounds}, got {value!r}", param=name)
    return value


def parse_chat(body: Any, allow_local_files: bool = False) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; an :class:`ApiError` (400) names the field and the fix."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object with 'model' and 'messages'")
    messages, clips = _messages(body.get("messages"), allow_local_files)
    decoding: dict[str, Any] = {}
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            decoding["max_new_tokens"] = _number(body, name, 1, integer=True)
    for name in EXTRA_OPTIONS:
        if body.get(name) is not None:
            decoding[name] = body[name]
    explicit = "method" in decoding or "beam_size" in decoding
    if body.get("temperature") is not None:
        temperature = _number(body, "temperature", 0, 2)
        if not explicit:
            decoding["method"] = "sample" if temperature > 0 else "greedy"
        if temperature > 0:
            decoding["temperature"] = float(temperature)
    if body.get("top_p") is not None:
        decoding["top_p"] = float(_number(body, "top_p", 0, 1))
        if decoding["top_p"] == 0:
            raise ApiError(400, "top_p must be above 0 (use temperature 0 for greedy decoding)", param="top_p")
        if not explicit and body.get("temperature") is None:
            decoding["method"] = "sample"
    if "beam_size" in decoding and "method" not in decoding:
        decoding["method"] = "beam"
    if body.get("seed") is not None:
        decoding["seed"] = _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    if body.get("stop") is not None:
        stop = body["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, f"stop must be a non-empty string or a list of them, got {body['stop']!r}", param="stop")
        decoding["stop"] = stop
    types = {f.name: f.type for f in fields(Decoding)}
    for name, value in decoding.items():  # the rest is checked by Decoding itself; here only the types
        expected = types.get(name, "")
        if "int" in expected and "float" not in expected and not _is_int(value) and value is not None:
            raise ApiError(400, f"{name} must be an integer, got {value!r}", param=name)
        if expected == "float" and not (_is_int(value) or isinstance(value, float)):
            raise ApiError(400, f"{name} must be a number, got {value!r}", param=name)
        if expected in ("str", "bool") and not isinstance(value, {"str": str, "bool": bool}[expected]):
            raise ApiError(400, f"{name} must be a {'string' if expected == 'str' else 'boolean'}, got {value!r}",
                           param=name)
    n = _number(body, "n", 1, MAX_CHOICES, integer=True) if body.get("n") is not None else 1
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object such as {\"include_usage\": true}", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {model!r}", param="model")
    known = {"messages", "model", "n", "stream", "stream_options", "temperature", "top_p", "seed", "stop",
             "max_tokens", "max_completion_tokens", *EXTRA_OPTIONS}
    return ChatRequest(messages, clips, decoding, model, n, stream, bool(options.get("include_usage")),
                       sorted(k for k in body if k not in known))


def _messages(value: Any, allow_local_files: bool) -> tuple[list[dict[str, str]], list[InlineAudio | Path]]:
    try:
        messages, clips = api_messages(value, part=lambda part, n: _audio_url(part, n, allow_local_files))
    except _Bad as bad:
        raise ApiError(400, str(bad), param="messages") from None
    for clip in clips:
        if isinstance(clip, InlineAudio) and clip.format not in AUDIO_FORMATS:
            raise ApiError(400, f"input_audio format {clip.format!r}: send one of {', '.join(AUDIO_FORMATS)}",
                           param="messages")
    return messages, clips


def _audio_url(part: Any, n: int, allow_local_files: bool) -> Any:
    """An ``audio_url`` part as the part the conversation reader takes: a ``data:`` URL as
    ``input_audio``, a ``file://`` URL (``--allow-local-files``) as a path. A client's own
    ``audio`` parts (paths) are refused: only the server's flag opens local files."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "audio":
        raise _Bad(f"message {n}: unknown content part 'audio'", "use 'text', 'input_audio' and 'audio_url' parts")
    if kind != "audio_url":
        return part
    url = part.get("audio_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise _Bad(f"message {n}: audio_url has no url", 'write {"type": "audio_url", "audio_url": {"url": ...}}')
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if ";base64" not in header:
            raise _Bad(f"message {n}: a data: URL that is not base64", "write data:audio/wav;base64,<base64>")
        mime = header[5:].split(";")[0]
        kind = mime.split("/")[-1].removeprefix("x-") or "wav"
        return {"type": "input_audio", "input_audio": {"data": data, "format": {"mpeg": "mp3", "wave": "wav"}.get(kind, kind)}}
    if url.startswith("file://"):
        if not allow_local_files:
            raise _Bad(f"message {n}: a file:// URL, and this server reads no local files",
                       "send the audio as input_audio, or start the server with --allow-local-files")
        path = Path(unquote(urlparse(url).path))
        if not path.is_file():
            raise _Bad(f"message {n}: {path} is not a file on the server")
        return {"type": "audio", "audio": path}
    raise _Bad(f"message {n}: audio_url {url[:60]!r}: the server fetches no URLs",
               "send the audio as input_audio (base64) or a data: URL")


def check_single_question(request: ChatRequest) -> None:
    """A Pengi-layout model answers one question about one clip: one user message with one clip.
    A system message before it (harnesses send one) is ignored, and listed as ignored."""
    if request.messages[0]["role"] == "system" and len(request.messages) > 1:
        del request.messages[0]
        request.ignored.append("system message")
    roles = [m["role"] for m in request.messages]
    if roles != ["user"] or len(request.clips) != 1:
        raise ApiError(400, f"this model answers one question about one clip (Pengi's layout), and the request has "
                       f"{len(roles)} message(s) ({', '.join(roles)}) and {len(request.clips)} clip(s): send one user "
                       "message with one audio part and its text, or serve a model of the chat layout",
                       param="messages")


def decode_base64(data: Any, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ApiError(400, f"{what} is not base64: encode the file's bytes in base64", param="input") from None


# ---------------------------------------------------------------------- responses

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """The ``chat.completion`` object; ``choices``: each ``{"text", "finish_reason", "tokens"}`` in order."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                         "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, sum(c["tokens"] for c in choices))}


def chunk(cid: str, model: str, index: int | None = None, delta: dict[str, str] | None = None,
          finish_reason: str | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk``: one choice's delta, or with ``usage_`` the closing usage chunk."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                           "choices": []}
    if index is not None:
        out["choices"] = [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    if usage_ is not None:
        out["usage"] = usage_
    return out
