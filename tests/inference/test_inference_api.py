"""pengi_kit.load(...).generate/describe/embed_*: the prefix in both modes (compat leaves the
prompt embedding unnormalised, as the reference wrapper), every clip encoded once,
input kinds, batching, bad clips."""
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from oracles import beam, pengi_beam

from pengi_kit.api import Clip, Pengi
from pengi_kit.errors import AudioError
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

RATE = 16000


@pytest.fixture(scope="module")
def pengi(tmp_path_factory):
    torch.manual_seed(0)
    raw = tiny_recipe(tmp_path_factory.mktemp("run"), text_encoder=True)
    raw["generate"] = {"method": "beam", "beam_size": 2, "max_new_tokens": 5}
    # GPT-2's byte-level tokens: compat "pengi" stops on a space, not on end-of-text
    model = build_model(from_dict(raw, ["model.lm.tokenizer='byte'"])).eval()
    return Pengi(model, num_workers=2)


def wave(seed, seconds=0.5):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(RATE * seconds)).astype(np.float32)


def encoded_rows(pengi):
    """Counts the clips that reach the audio encoder."""
    seen = []
    handle = pengi.model.audio_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("compat", ["none", "pengi"])
def test_generate_equals_uncached_decoding_of_the_reference_prefix(pengi, compat):
    model, lm = pengi.model, pengi.model.lm
    clips = [(wave(i), RATE) for i in range(3)]
    prompts = ["generate audio caption", "this is a sound of", "generate metadata"]
    got = pengi.generate(clips, prompts, compat=compat, beam_size=3, max_new_tokens=6)
    with torch.no_grad():
        audio = torch.stack([torch.from_numpy(c[0]) for c in clips])
        tokens = model.tokenize_prompts(prompts)
        prompt = model.text_projection(model.text_encoder(tokens["input_ids"], tokens["attention_mask"]))
        if compat == "none":  # training's prefix: both embeddings normalised; the reference's: audio only
            prompt = F.normalize(prompt, dim=-1)
        prefix = torch.cat([model.audio_mapper(F.normalize(model.audio_projection(model.audio_encoder(audio)), dim=-1)),
                            model.text_mapper(prompt)], 1)
        assert not torch.allclose(model.prefix(audio, tokens["input_ids"], tokens["attention_mask"], "pengi"),
                                  model.prefix(audio, tokens["input_ids"], tokens["attention_mask"]))
    stop = lm.tokenizer.encode(" <|endoftext|>")[0] if compat == "pengi" else lm.eos_token_id
    search = pengi_beam if compat == "pengi" else beam
    rows = [search(lm, prefix[i:i + 1], 3, 6, stop) for i in range(3)]
    if compat == "pengi":  # the reference's string: its tokens up to the stop id included (a stopped row is
        # shorter than 6), special tokens kept, nothing stripped, transformers 4.30's space clean-up
        want = [lm.tokenizer.clean_up_tokenization(lm.tokenizer.decode(
            row + [stop] * (len(row) < 6), skip_special_tokens=False, clean_up_tokenization_spaces=False))
            for row in rows]
    else:
        want = [lm.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
    assert got == want


def test_each_clip_is_encoded_once_whatever_its_prompts(pengi, tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, wave(0), RATE)
    shared = (wave(1), RATE)
    seen, handle = encoded_rows(pengi)
    try:
        out = pengi.generate([str(path), shared, str(path)],
                             [["generate audio caption", "this is a sound of"], ["generate metadata"],
                              ["generate metadata"]], batch_size=2)
        assert sum(seen) == 2  # a.wav is named twice and asked three prompts: loaded and encoded once
        assert [len(texts) for texts in out] == [2, 1, 1]
        assert out[2] == pengi.generate([str(path)], "generate metadata")
        seen.clear()
        described = pengi.describe(str(path))
        assert sum(seen) == 1
    finally:
        handle.remove()
    assert set(described) == {"caption", "metadata", "sound_events", "summary"}
    assert described["summary"] == (f"{described['caption']} {described['metadata']} "
                                    f"this audio contains sound events: {described['sound_events']}.")
    assert described["caption"] == pengi.generate(str(path), ["generate audio caption"])[0]


def test_audio_kinds_agree_and_batching_changes_nothing(pengi, tmp_path):
    mono = wave(2)
    sf.write(tmp_path / "m.wav", mono, RATE)
    sf.write(tmp_path / "long.wav", np.concatenate([wave(3), mono]), RATE)
    sf.write(tmp_path / "st.wav", np.stack([mono, mono], 1), RATE)
    kinds = [str(tmp_path / "m.wav"), (mono, RATE), torch.from_numpy(mono), Clip(tmp_path / "long.wav", start=0.5),
             str(tmp_path / "st.wav"), (np.stack([mono, mono]), RATE)]
    out = pengi.generate(kinds, "this is a sound of", sample_rate=RATE, method="greedy", batch_size=4)
    assert len(set(out)) == 1
    embeddings = pengi.embed_audio(kinds, sample_rate=RATE, batch_size=4)
    torch.testing.assert_close(embeddings, embeddings[:1].expand(len(kinds), -1))
    clips = [(wave(i), RATE) for i in range(5)]
    prompts = ["generate audio caption", "generate metadata"] * 2 + ["this is a sound of"]
    assert pengi.generate(clips, prompts, batch_size=1) == pengi.generate(clips, prompts, batch_size=32)
    torch.testing.assert_close(pengi.embed_audio(clips, batch_size=2), pengi.embed_audio(clips))
    text = pengi.embed_text(["a dog", "rain", "a dog"], batch_size=2)
    assert text.shape == (3, 16) and torch.allclose(text[0], text[2]) and torch.allclose(text.norm(dim=-1), torch.ones(3))


def test_bad_clips_raise_or_are_skipped(pengi, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nonsense")
    good = (wave(0), RATE)
    with pytest.raises(AudioError, match="bad.wav"):
        pengi.generate([good, str(bad)], "generate audio caption")
    out = pengi.generate([good, str(bad), good], "generate audio caption", on_error="skip")
    assert out[1] is None and out[0] == out[2] is not None
    seen = []
    assert pengi.describe([str(bad), good], on_error=lambda item, exc: seen.append((item, str(exc))))[0] is None
    assert len(seen) == 1 and "bad.wav" in seen[0][1]
    with pytest.raises(ValueError, match="sample rate"):
        pengi.generate([wave(0)], "x")
    with pytest.raises(ValueError, match="2 clips but 3 prompts"):
        pengi.generate([good, good], ["a", "b", "c"])


def test_arrays_and_files_take_one_preparation_path(pengi, tmp_path):
    # stereo at another rate, shorter than the encoder's clip: mixed, resampled and repeat-padded alike
    rate = 22050
    stereo = np.random.default_rng(7).uniform(-0.5, 0.5, (int(rate * 0.3), 2)).astype(np.float32)
    sf.write(tmp_path / "st.wav", stereo, rate, subtype="FLOAT")
    from_file = pengi._waveform(str(tmp_path / "st.wav"), None)
    assert from_file.shape == (int(pengi.model.sample_rate * pengi.model.clip_seconds),)
    for array in [(stereo, rate), (stereo.T, rate), (torch.from_numpy(stereo.T).double(), rate)]:
        torch.testing.assert_close(pengi._waveform(array, None), from_file)
    with pytest.raises(ValueError, match=r"1-D \(or 2-D with channels\), got shape \(2, 3, 4\)"):
        pengi._waveform((np.zeros((2, 3, 4)), rate), None)
