"""``pengi-kit serve`` as clients meet it: a subprocess on a free loopback port, driven by OpenAI's
own Python client. Each error case checks its status, OpenAI's error shape, and that a normal
request still succeeds after it; the server's log must hold no traceback."""
import base64
import io
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import pengi_kit
from pengi_kit.server import spawned

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # subprocesses: not in the fast lane
KEY = "test-key"
CLAP = Path(__file__).parents[1] / "fixtures" / "pre_models" / "clap"


def _wav(freq: float, seconds: float = 0.5, rate: int = 16000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


def _part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def _ask(data: bytes, prompt: str = "generate audio caption") -> list[dict]:
    return [{"role": "user", "content": [_part(data), {"type": "text", "text": prompt}]}]


def _post(url: str, body: bytes, key: str | None = KEY, path: str = "/v1/chat/completions") -> tuple[int, dict, dict]:
    request = urllib.request.Request(url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def _metric(url: str, name: str) -> float:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.fixture(scope="module")
def server(untrained_checkpoint):
    with spawned(untrained_checkpoint, "--device", "cpu", "--api-key", KEY, "--max-body", "200000",
                 "--model-name", "tiny") as running:
        yield running
    assert running.process.returncode == 0 and not any("Traceback" in line for line in running.log), running.log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_answers_streams_and_choices_are_the_offline_answers(untrained_checkpoint, server, client):
    clips = [_wav(f) for f in (220, 440, 880)]
    pengi = pengi_kit.load(untrained_checkpoint, device="cpu")
    offline = [pengi.generate((sf.read(io.BytesIO(c), dtype="float32")[0], 16000), "generate audio caption")[0]
               for c in clips]
    for data, want in zip(clips, offline):
        answer = client.chat.completions.create(model="tiny", messages=_ask(data))
        assert answer.choices[0].message.content == want and answer.object == "chat.completion"
        assert answer.usage.completion_tokens >= 1 and answer.usage.prompt_tokens > 0
        assert answer.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="tiny", messages=_ask(clips[1]), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == offline[1] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    two = client.chat.completions.create(model="tiny", messages=_ask(clips[2]), n=2)
    assert [c.message.content for c in two.choices] == [offline[2]] * 2  # greedy: the same answer twice
    sampled = [client.chat.completions.create(model="tiny", messages=_ask(clips[0]), n=2, temperature=1.0, seed=7,
                                              max_tokens=6) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    beams = client.chat.completions.create(model="tiny", messages=_ask(clips[0]), extra_body={"beam_size": 3})
    assert beams.choices[0].message.content == pengi.generate(
        (sf.read(io.BytesIO(clips[0]), dtype="float32")[0], 16000), "generate audio caption", method="beam",
        beam_size=3)[0]
    assert client.models.list().data[0].id == "tiny"


def _too_many_turns() -> list[dict]:
    return [*_ask(_wav(440)), {"role": "assistant", "content": "a tone"}, {"role": "user", "content": "louder?"}]


@pytest.mark.parametrize("case", ["invalid json", "invalid base64", "not audio", "too large", "unknown model",
                                  "unknown part", "no key", "wrong key", "two turns", "bad temperature",
                                  "not an object", "no route"])
def test_bad_requests_get_a_4xx_in_openai_shape_and_the_server_goes_on(server, client, case):
    good = json.dumps({"model": "tiny", "messages": _ask(_wav(440))}).encode()
    body = {"invalid json": b'{"model": "tiny", "messages": [',
            "invalid base64": json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]}).encode(),
            "not audio": json.dumps({"model": "tiny", "messages": _ask(b"this is not audio at all")}).encode(),
            "too large": json.dumps({"model": "tiny", "messages": _ask(_wav(440, seconds=5.0))}).encode(),
            "unknown model": good.replace(b'"tiny"', b'"gpt-4o"'),
            "unknown part": json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "x"}}]}]}).encode(),
            "two turns": json.dumps({"model": "tiny", "messages": _too_many_turns()}).encode(),
            "bad temperature": good[:-1] + b', "temperature": "hot"}',
            "not an object": b'["tiny"]'}.get(case, good)
    key = {"no key": None, "wrong key": "nope"}.get(case, KEY)
    status, headers, error = _post(server.url, body, key, "/v1/nowhere" if case == "no route" else
                                   "/v1/chat/completions")
    expected = {"too large": 413, "unknown model": 404, "no key": 401, "wrong key": 401, "no route": 404}.get(case, 400)
    assert status == expected, (case, error)
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, error
    assert error["error"]["message"] and "Traceback" not in error["error"]["message"]
    says = {"invalid json": "not valid JSON", "invalid base64": "not base64", "not audio": "not audio",
            "too large": "--max-body", "unknown model": "serves 'tiny'", "unknown part": "unknown content part",
            "no key": "Authorization: Bearer", "wrong key": "wrong", "two turns": "one question about one clip",
            "bad temperature": "temperature", "not an object": "JSON object", "no route": "/v1/chat/completions"}
    assert says[case] in error["error"]["message"], error
    assert client.chat.completions.create(model="tiny", messages=_ask(_wav(440))).choices[0].message.content


def _checkpoint(folder: Path, chat: bool = False, positions: int = 64) -> Path:
    """A tiny untrained model saved as a checkpoint: greedy, 5 new tokens unless asked."""
    import torch

    from pengi_kit.checkpoint import save_checkpoint
    from pengi_kit.model import build_model
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    raw = tiny_recipe(folder / "run")
    raw["model"]["lm"]["n_positions"] = positions
    if chat:
        del raw["model"]["text_mapper"]
        raw["model"]["layout"] = "chat"
    raw["generate"] = {"method": "greedy", "max_new_tokens": 5}
    torch.manual_seed(0)
    recipe = from_dict(raw)
    return save_checkpoint(folder / "run" / "checkpoints" / "step-00000001", build_model(recipe), recipe)


def _rows(url: str, until: int, seconds: float = 20.0) -> tuple[float, float]:
    """Poll until ``until`` rows decode and no request waits: (rows, requests waiting)."""
    deadline = time.monotonic() + seconds
    while (state := (_metric(url, "pengi_kit_running_rows"), _metric(url, "pengi_kit_queue_depth"))) != (until, 0) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return state


def test_a_client_that_leaves_frees_its_rows_and_a_full_queue_is_429_then_sigterm_drains(tmp_path):
    checkpoint = _checkpoint(tmp_path, positions=2048)  # room for answers long enough to watch (~2 s)
    with spawned(checkpoint, "--device", "cpu", "--max-batch", "1", "--max-queue", "1") as running:
        long = {"model": checkpoint.name, "messages": _ask(_wav(440)), "max_tokens": 2000, "min_new_tokens": 2000}
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=long["model"], messages=long["messages"], max_tokens=2000,
                                                extra_body={"min_new_tokens": 2000}, stream=True)
        next(iter(stream))  # decoding has begun; then the client goes away
        stream.close()
        assert _rows(running.url, 0) == (0, 0)
        body = json.dumps(long).encode()
        address = urllib.parse.urlsplit(running.url)
        with socket.create_connection((address.hostname, address.port)) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert _rows(running.url, 1) == (1, 0)
        # the connection closed mid-answer (not a stream): the row leaves at once
        assert _rows(running.url, 0) == (0, 0)
        assert _metric(running.url, "pengi_kit_generated_tokens_total") == 0  # both dropped, neither finished

        results: list = []
        short = json.dumps({**long, "max_tokens": 100, "min_new_tokens": 100}).encode()
        threads = [threading.Thread(target=lambda: results.append(_post(running.url, short, None)))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        refused = [r for r in results if r[0] == 429]
        assert refused and all(r[1].get("retry-after") == "1" and r[2]["error"]["type"] == "rate_limit_error"
                               for r in refused), [r[0] for r in results]
        assert all(r[0] in (200, 429) for r in results) and any(r[0] == 200 for r in results)

        answer: list = []
        worker = threading.Thread(target=lambda: answer.append(_post(running.url, body, None)))
        worker.start()
        assert _rows(running.url, 1) == (1, 0)
        running.process.send_signal(signal.SIGTERM)  # drains: the request in flight is answered
        worker.join(120)
        assert answer and answer[0][0] == 200 and answer[0][2]["usage"]["completion_tokens"] == 2000
        assert running.process.wait(60) == 0


def test_a_chat_model_answers_about_two_clips_in_one_message(tmp_path):
    checkpoint = _checkpoint(tmp_path, chat=True)
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    a.write_bytes(_wav(300))
    b.write_bytes(_wav(900, fmt="FLAC"))
    question = "which one is higher?"
    offline = pengi_kit.load(checkpoint, device="cpu").chat(
        [{"role": "system", "content": "be brief"},
         {"role": "user", "content": [{"type": "audio", "audio": str(a)}, {"type": "audio", "audio": str(b)},
                                      {"type": "text", "text": question}]}])
    with spawned(checkpoint, "--device", "cpu", "--allow-local-files") as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=60)
        for second in (_part(b.read_bytes(), "flac"), {"type": "audio_url", "audio_url": {"url": b.as_uri()}}):
            answer = client.chat.completions.create(model=checkpoint.name, messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [_part(a.read_bytes()), second, {"type": "text", "text": question}]}])
            assert answer.choices[0].message.content == offline


def test_a_clap_folder_serves_embeddings_and_refuses_chat(tmp_path):
    clap = pengi_kit.load(CLAP, device="cpu")
    clip = _wav(440)
    texts = ["a dog barks", "rain on a roof"]
    want_text = clap.embed_text(texts)
    want_audio = clap.embed_audio((sf.read(io.BytesIO(clip), dtype="float32")[0], 16000))
    with spawned(CLAP, "--device", "cpu") as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=60)
        got = client.embeddings.create(model="clap", input=texts)  # the client asks for base64 floats
        assert np.allclose([d.embedding for d in got.data], want_text.numpy(), atol=1e-5)
        status, _, body = _post(running.url, json.dumps({"model": "clap", "encoding_format": "float", "input": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}]}
        ).encode(), None, "/v1/embeddings")
        assert status == 200 and np.allclose(body["data"][0]["embedding"], want_audio[0].numpy(), atol=1e-5)
        status, _, body = _post(running.url, json.dumps({"model": "clap", "messages": _ask(clip)}).encode(), None)
        assert status == 400 and "/v1/embeddings" in body["error"]["message"]
