"""The server's decoder in process (pengi_kit.server.scheduler, no HTTP): requests that join a
running decode get the answers they get offline, alone; a full queue is refused; a request that
leaves frees its rows; and OpenAI's request bodies are read field by field (protocol)."""
import io
import queue
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

import pengi_kit
from pengi_kit.server.protocol import ApiError, parse_chat
from pengi_kit.server.scheduler import Job, Scheduler


def _wav(freq: float, seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def _job(pengi, data: bytes, prompt: str, events: "queue.Queue", **decoding) -> Job:
    wave = pengi._waveform(io.BytesIO(data), None)
    return Job([wave], (str(hash(data)),), prompt, pengi.decoding(**decoding), events.put)


def _answers(events: "queue.Queue", jobs: int, timeout: float = 60.0) -> list[tuple]:
    ends = []
    while len(ends) < jobs:
        event = events.get(timeout=timeout)
        assert event[0] != "error", event
        if event[0] == "end":
            ends.append(event)
    return ends


def test_requests_that_join_a_running_decode_get_their_offline_answers(untrained_checkpoint):
    pengi = pengi_kit.load(untrained_checkpoint, device="cpu")
    clips = [_wav(f) for f in (220, 330, 440, 550, 660, 880, 990)]
    prompts = ["generate audio caption", "this is a sound of"]
    settings = [{"max_new_tokens": 8}, {"method": "beam", "beam_size": 3, "max_new_tokens": 6},
                {"method": "sample", "seed": 5, "top_k": 10, "max_new_tokens": 8},
                {"method": "beam", "beam_size": 3, "compat": "pengi", "max_new_tokens": 6}]
    cases = [(c, prompts[i % 2], settings[i % 4]) for i, c in enumerate(clips)]
    offline = []
    for data, prompt, options in cases:  # each request alone, as `pengi-kit generate` runs it
        offline.append(pengi.generate((pengi._waveform(io.BytesIO(data), None).numpy(), pengi.model.sample_rate),
                                      prompt, **options)[0])
    scheduler = Scheduler(pengi, max_batch=5, max_queue=16)
    scheduler.start()
    try:
        inboxes = [queue.Queue() for _ in cases]
        for (data, prompt, options), events in zip(cases, inboxes):  # one joins every few steps
            scheduler.submit(_job(pengi, data, prompt, events, **options))
            threading.Event().wait(0.01)
        got = [_answers(events, 1)[0][2] for events in inboxes]
        assert got == offline
        events = queue.Queue()  # n = 2 greedy choices share one prefill and agree
        job = _job(pengi, clips[0], prompts[0], events, method="greedy", max_new_tokens=8)
        job.n = 2
        scheduler.submit(job)
        assert [e[2] for e in sorted(_answers(events, 2), key=lambda e: e[1])] == [offline[0]] * 2
    finally:
        scheduler.close()
    assert not scheduler.thread.is_alive()


def test_a_full_queue_is_refused_with_429_and_retry_after(untrained_checkpoint):
    pengi = pengi_kit.load(untrained_checkpoint, device="cpu")
    scheduler = Scheduler(pengi, max_batch=2, max_queue=2)  # not started: nothing leaves the queue
    events = queue.Queue()
    for _ in range(2):
        scheduler.submit(_job(pengi, _wav(440), "x", events))
    with pytest.raises(ApiError) as refused:
        scheduler.submit(_job(pengi, _wav(440), "x", events))
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    assert refused.value.body()["error"]["type"] == "rate_limit_error"


def test_a_cancelled_row_frees_its_slot_and_the_others_keep_their_tokens(untrained_checkpoint):
    from pengi_kit.generation import Decoding, Stream, generate

    lm = pengi_kit.load(untrained_checkpoint, device="cpu").model.lm
    torch.manual_seed(0)
    prefixes = [torch.randn(n, lm.hidden_size) for n in (3, 5, 4)]
    cfg = Decoding(method="greedy", max_new_tokens=6, min_new_tokens=6)
    alone = [generate(lm, p[None], cfg)[0] for p in prefixes]
    stream = Stream(lm, rows=3, length=16)
    for i, p in enumerate(prefixes):
        stream.add(i, p, cfg)
    got = dict(stream.step())
    stream.cancel(1)
    got.update(stream.step())
    assert stream.stepped == 3 and len(stream.owners) == 2  # the cancelled row left at the step
    while stream.busy:
        got.update(stream.step())
    assert got == {0: alone[0], 2: alone[2]}


def _audio(data: str = "UklGRg==") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def test_openai_fields_map_onto_decoding_and_bad_values_name_their_field():
    message = [{"role": "user", "content": [_audio(), {"type": "text", "text": "what is it?"}]}]
    request = parse_chat({"model": "m", "messages": message, "temperature": 0, "max_tokens": 9, "stop": "\n",
                          "beam_size": 2, "user": "u", "logprobs": True, "new_field": 1})
    assert request.decoding == {"max_new_tokens": 9, "beam_size": 2, "method": "beam", "stop": ["\n"]}
    assert request.ignored == ["logprobs", "new_field", "user"] and request.prompt() == "what is it?"
    assert parse_chat({"messages": message, "temperature": 0.7}).decoding == {"method": "sample", "temperature": 0.7}
    assert parse_chat({"messages": message}).decoding == {}  # omitted: the checkpoint's own [generate]
    for body, param in [({"temperature": "hot"}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                        ({"n": 17}, "n"), ({"stream": "yes"}, "stream"), ({"stop": [""]}, "stop"),
                        ({"beam_size": 1.5}, "beam_size"), ({"messages": "hi"}, "messages")]:
        with pytest.raises(ApiError) as bad:
            parse_chat({"messages": message, **body})
        assert bad.value.status == 400 and bad.value.param == param, (body, bad.value.message)


@pytest.mark.parametrize("part, says", [
    ({"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}, "not base64"),
    ({"type": "video", "video": "x"}, "unknown content part 'video'"),
    ({"type": "audio", "audio": "/etc/passwd"}, "unknown content part 'audio'"),
    ({"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}, "fetches no URLs"),
    ({"type": "audio_url", "audio_url": {"url": "file:///tmp/a.wav"}}, "--allow-local-files"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "aiff"}}, "format 'aiff'"),
])
def test_audio_parts_the_server_does_not_take_are_400_with_the_fix(part, says):
    with pytest.raises(ApiError) as bad:
        parse_chat({"messages": [{"role": "user", "content": [part]}]})
    assert bad.value.status == 400 and says in bad.value.message


def test_a_data_url_is_audio_and_a_local_file_needs_the_flag(tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(_wav(440))
    url = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,UklGRg=="}}
    assert parse_chat({"messages": [{"role": "user", "content": [url]}]}).clips[0].data == b"RIFF"
    local = {"type": "audio_url", "audio_url": {"url": clip.as_uri()}}
    assert parse_chat({"messages": [{"role": "user", "content": [local]}]}, allow_local_files=True).clips == [clip]


def test_a_fault_in_the_decoder_fails_what_runs_with_500_and_the_next_request_is_answered(untrained_checkpoint,
                                                                                           capsys):
    pengi = pengi_kit.load(untrained_checkpoint, device="cpu")
    scheduler = Scheduler(pengi, max_batch=4)
    step, faults = scheduler.stream.step, [RuntimeError("CUDA error: an illegal memory access")]

    def faulty():
        if faults:
            raise faults.pop()
        return step()

    scheduler.stream.step = faulty
    scheduler.start()
    try:
        events = queue.Queue()
        scheduler.submit(_job(pengi, _wav(440), "x", events, max_new_tokens=4))
        while (event := events.get(timeout=60))[0] != "error":
            pass
        assert event[1].status == 500 and "RuntimeError" in event[1].message and "CUDA" not in event[1].message
        assert scheduler.queued == 0 and not scheduler.jobs
        events = queue.Queue()
        scheduler.submit(_job(pengi, _wav(440), "x", events, max_new_tokens=4))
        assert _answers(events, 1)[0][3] in ("stop", "length")
    finally:
        scheduler.close()
    assert "illegal memory access" in capsys.readouterr().err  # the details: in the server's log


def test_a_pengi_layout_request_is_one_question_about_one_clip_and_a_system_message_is_ignored():
    from pengi_kit.server.protocol import check_single_question

    ask = {"role": "user", "content": [_audio(), {"type": "text", "text": "what is it?"}]}
    request = parse_chat({"messages": [{"role": "system", "content": "You are a helpful assistant."}, ask]})
    check_single_question(request)
    assert request.prompt() == "what is it?" and request.ignored == ["system message"]
    for messages in ([ask, {"role": "assistant", "content": "a dog"}, ask],
                     [{"role": "user", "content": [_audio(), _audio(), {"type": "text", "text": "which?"}]}]):
        with pytest.raises(ApiError) as refused:
            check_single_question(parse_chat({"messages": messages}))
        assert refused.value.status == 400 and "one question about one clip" in refused.value.message
