"""``pengi-kit serve``: an OpenAI-compatible server for a pengi-kit model (docs/serving.md).

``POST /v1/chat/completions`` (audio as ``input_audio`` parts or ``data:`` URLs, streaming,
``n``, continuous batching), ``POST /v1/embeddings`` (CLAP folders, and models with a text
encoder), ``GET /v1/models``, ``GET /health`` and ``GET /metrics``. Needs the ``serve`` extra
(``pip install 'pengi-kit[serve]'``: uvicorn and Starlette).
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pengi_kit.errors import PengiKitError

def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_batch: int = 32, max_queue: int = 256, max_body: int = 32 * 2**20, max_length: int = 2048,
          api_key: str | None = None, allow_local_files: bool = False, model_name: str | None = None,
          log_level: str = "info") -> None:
    """Load ``checkpoint`` and serve it on ``host``:``port`` (0: a free port) until SIGINT or
    SIGTERM, which stop taking connections, let the requests in flight finish, then return."""
    try:
        import uvicorn
    except ImportError:
        raise PengiKitError("pengi-kit serve needs uvicorn and Starlette: pip install 'pengi-kit[serve]'") from None
    from pengi_kit.api import load
    from pengi_kit.server.app import Server

    for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1), ("max_body", max_body, 1024),
                             ("max_length", max_length, 16)):
        if value < low:
            raise PengiKitError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    pengi = load(checkpoint, device=device)
    name = model_name or Path(checkpoint).resolve().name
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise PengiKitError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                            "(0 picks a free one)") from None
    sock.listen(2048)  # from now on connections wait in the backlog, even before uvicorn accepts them
    bound = sock.getsockname()[1]
    server = Server(pengi, name, api_key=api_key, max_body=max_body, allow_local_files=allow_local_files,
                    max_batch=max_batch, max_queue=max_queue, max_length=max_length,
                    ready=f"pengi-kit serve: {name} ({pengi.model.layout if pengi.generates else 'clap'}) on "
                          f"http://{host}:{bound} (max batch {max_batch}, queue {max_queue})")
    config = uvicorn.Config(server.app, log_level=log_level, timeout_graceful_shutdown=None)
    # uvicorn drains on SIGINT/SIGTERM, then raises the signal again under the handlers it found:
    # with these, a drained server returns (exit status 0) instead of dying of the signal
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Spawned:
    """A server started by :func:`spawned`: its ``url`` (``http://127.0.0.1:PORT``), ``process``
    and the ``log`` lines it has written so far."""

    def __init__(self, process: Any) -> None:
        self.process, self.log, self.url = process, [], ""


@contextmanager
def spawned(checkpoint: str | Path, *options: str, timeout: float = 300.0) -> Iterator[Spawned]:
    """Run ``pengi-kit serve CHECKPOINT --port 0 OPTIONS`` in a subprocess on a free loopback port
    until it is ready, yield it, then stop it with SIGTERM (tests, benchmarks, scripts)."""
    process = subprocess.Popen([sys.executable, "-m", "pengi_kit", "serve", str(checkpoint), "--host", "127.0.0.1",
                                "--port", "0", *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server, ready = Spawned(process), threading.Event()

    def read() -> None:  # drains the log, so the server never blocks on a full pipe
        for line in process.stderr:
            server.log.append(line.rstrip("\n"))
            found = re.search(r"^pengi-kit serve: .* on (http://\S+) ", line)
            if found:
                server.url = found.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(timeout) or not server.url:
            raise PengiKitError(f"pengi-kit serve {checkpoint} did not start within {timeout:.0f} s:\n"
                                + "\n".join(server.log[-20:]))
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
