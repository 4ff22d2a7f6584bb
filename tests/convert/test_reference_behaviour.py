"""Imported checkpoints answer exactly as the reference code does, with no flag.

- An imported Pengi (``base`` and ``base_no_text_enc``) or CLAPCap checkpoint carries the
  reference's inference settings in its recipe, so a plain ``generate`` returns the
  strings of a line-by-line re-implementation of the reference wrappers' beam search and
  decoding (``PengiWrapper._generate_beam``; msclap's ``CLAPWrapper.generate_caption``),
  leading/trailing spaces and literal ``<|endoftext|>`` included.
- Microsoft CLAP 2023 text embeddings are pooled where msclap pools them, texts with
  ``'!'`` included.
- A file of the wrong format is named as what it is, and messages are never cut.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from layouts import TINY_HTSAT, module_prefixed, randomize, save_hf_dir, tiny_gpt2_dir, tiny_htsat, \
    torchlibrosa_front_end, with_torchlibrosa
from test_import_pengi import K, build_reference

import pengi_kit
from pengi_kit.cli import main
from pengi_kit.components._hf import byte_tokenizer
from pengi_kit.components.hf_text import gpt2_text
from pengi_kit.convert import ConversionError, import_checkpoint
from pengi_kit.convert.clap import load_clap
from pengi_kit.checkpoint import read_recipe
from pengi_kit.generation import reference_text
from pengi_kit.model import Projection, build_model
from pengi_kit.recipe import from_dict

PROMPTS = ["generate audio caption", "this is a sound of", "generate metadata"]
EOS, STOP = 256, 220  # the byte tokenizer's end-of-text and ' ' (GPT-2's ids for them: 50256, 220)
A, B_LOWER, B_UPPER = 64, 65, 33  # 'a', 'b', 'B'


# ------------------------------------------------------------------ the reference, re-implemented

def reference_decode(tokenizer, ids) -> str:
    """``tokenizer.decode(ids)`` under the transformers the wrappers pin (4.30): special tokens
    kept, and its default clean-up of spaces before punctuation."""
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return tokenizer.clean_up_tokenization(text)


@torch.no_grad()
def wrapper_beam(gpt, tokenizer, embed, beam_size, entry_length, temperature=1.0) -> list[str]:
    """The reference ``_generate_beam`` (Pengi's wrapper.py, msclap's CLAPWrapper.py): one clip,
    the whole sequence re-run at every step. Texts best first."""
    stop = tokenizer.encode(" <|endoftext|>")[0]
    seq = embed  # (1, P, D)
    tokens = scores = None
    lengths = torch.ones(beam_size)
    stopped = torch.zeros(beam_size, dtype=torch.bool)
    for _ in range(entry_length):
        logits = gpt(inputs_embeds=seq).logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        logp = logits.softmax(-1).log()
        if scores is None:  # first step: the k best tokens of the one sequence
            scores, nxt = logp.topk(beam_size, -1)
            scores, nxt = scores[0], nxt[0]
            seq = seq.expand(beam_size, *seq.shape[1:])
            tokens = nxt[:, None]
        else:
            logp[stopped] = -math.inf
            logp[stopped, 0] = 0.0
            summed = scores[:, None] + logp
            lengths[~stopped] += 1
            average, flat = (summed / lengths[:, None]).view(-1).topk(beam_size, -1)
            source, nxt = flat // summed.shape[1], flat % summed.shape[1]
            lengths, stopped, seq = lengths[source], stopped[source], seq[source]
            tokens = torch.cat([tokens[source], nxt[:, None]], dim=1)
            scores = average * lengths
        seq = torch.cat([seq, gpt.transformer.wte(nxt)[:, None]], dim=1)
        stopped = stopped | (nxt == stop)
        if stopped.all():
            break
    texts = [reference_decode(tokenizer, row[: int(n)]) for row, n in zip(tokens.tolist(), lengths.tolist())]
    return [texts[i] for i in (scores / lengths).argsort(descending=True).tolist()]


def script_gpt2(sd: dict[str, torch.Tensor], prefix: str, first: int, script: list[int], big: float = 30.0,
                weight: float = 2.0) -> None:
    """Make the (tied) GPT-2 under ``prefix`` of a reference state dict say ``script`` after
    a prefix of ``first + 1`` embeddings, whatever the prefix: its blocks add nothing, the
    position of step s points along e_s, and the token scripted for step s has e_s."""
    wte, wpe = sd[prefix + "transformer.wte.weight"].clone(), sd[prefix + "transformer.wpe.weight"].clone()
    for step, token in enumerate(script):
        wpe[first + step, step] += big
        wte[token, step] += weight
    sd[prefix + "transformer.wte.weight"] = wte
    sd[prefix + "lm_head.weight"] = wte
    sd[prefix + "transformer.wpe.weight"] = wpe
    for key in list(sd):
        if key.startswith(prefix + "transformer.h.") and (".attn.c_proj." in key or ".mlp.c_proj." in key):
            sd[key] = torch.zeros_like(sd[key])


def clips(n: int = 3):
    gen = torch.Generator().manual_seed(7)
    return [((torch.rand(44100, generator=gen) * 2 - 1).numpy(), 44100) for _ in range(n)]


def reference_prefix(pengi, wave, prompt) -> torch.Tensor:
    """The prefix as PengiWrapper computes it: the audio embedding L2-normalised, the prompt's not."""
    model = pengi.model
    tokens = model.tokenize_prompts([prompt])
    with torch.no_grad():
        audio = model.audio_mapper(F.normalize(model.audio_projection(model.audio_encoder(wave[None])), dim=-1))
        if model.text_encoder is None:  # base_no_text_enc: GPT-2's embeddings of the padded prompt
            text = model.text_mapper(model.lm.embed(tokens["input_ids"]), tokens["attention_mask"])
        else:
            text = model.text_mapper(model.text_projection(model.text_encoder(tokens["input_ids"],
                                                                              tokens["attention_mask"])))
    return torch.cat([audio, text], dim=1)


def import_pengi(tmp_path, with_text: bool, script: list[int] | None = None):
    """Import a tiny Pengi in the reference layout. Its GPT-2 blocks get weights large enough
    to vary the text from token to token and prompt to prompt (small random ones make a tied
    GPT-2 repeat one token), or, with ``script``, :func:`script_gpt2`."""
    _, path, dirs = build_reference(tmp_path, with_text, 14000.0 if with_text else 8000.0)
    ckpt = torch.load(path, weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    gen = torch.Generator().manual_seed(0)
    for key in sorted(sd):
        if key.startswith("caption_decoder.gpt.transformer.h.") and key.endswith(("c_attn.weight", "c_fc.weight",
                                                                                 "c_proj.weight")):
            sd[key] = torch.randn(sd[key].shape, generator=gen)
    if script is not None:
        script_gpt2(sd, "caption_decoder.gpt.", 2 * K - 1 if with_text else K + 40 - 1, script)
    torch.save({"model": sd}, path)
    out = tmp_path / "imported"
    import_checkpoint("pengi", path, out, lm=str(dirs["lm"]), text_encoder=str(dirs.get("text_encoder") or "x"))
    return out


# ------------------------------------------------------------------ Pengi

@pytest.mark.parametrize("with_text", [True, False])
def test_imported_pengi_generates_the_reference_text_without_a_flag(tmp_path, with_text):
    out = import_pengi(tmp_path, with_text)
    generate = read_recipe(out)["generate"]
    # PengiWrapper.generate as the Pengi README and example.py call it, in the reference's mode
    assert {k: generate[k] for k in ("method", "beam_size", "max_new_tokens", "temperature", "compat")} == \
        {"method": "beam", "beam_size": 3, "max_new_tokens": 30, "temperature": 1.0, "compat": "pengi"}
    pengi = pengi_kit.load(out)
    audio = clips()
    got = pengi.generate(audio, [PROMPTS] * len(audio))  # no flag
    assert got == pengi.generate(audio, [PROMPTS] * len(audio), compat="pengi")
    assert len({t for texts in got for t in texts}) >= 3  # prompts get different texts
    if with_text:  # pengi-kit's own mode (prompt embedding normalised, its search) answers otherwise
        assert got != pengi.generate(audio, [PROMPTS] * len(audio), compat="none")
    lm = pengi.model.lm
    for (wave, rate), texts in zip(audio, got):
        wave = pengi._waveform((wave, rate), None)
        want = [wrapper_beam(lm.model, lm.tokenizer, reference_prefix(pengi, wave, p), 3, 30)[0] for p in PROMPTS]
        assert texts == want


def test_reference_strings_keep_what_the_wrapper_prints(tmp_path):
    """A scripted LM says 'a', end-of-text, 'b', ' ': the reference stops on ' ' (220) and
    prints end-of-text literally; pengi-kit's own mode stops on end-of-text."""
    out = import_pengi(tmp_path, True, script=[A, EOS, B_LOWER, STOP])
    pengi = pengi_kit.load(out)
    lm = pengi.model.lm
    wave, rate = clips(1)[0]
    prefix = reference_prefix(pengi, pengi._waveform((wave, rate), None), PROMPTS[0])
    assert wrapper_beam(lm.model, lm.tokenizer, prefix, 3, 30)[0] == "a<|endoftext|>b "
    assert pengi.generate((wave, rate), PROMPTS[0]) == ["a<|endoftext|>b "]
    assert pengi.generate((wave, rate), PROMPTS[0], compat="none") == ["a"]
    described = pengi.describe((wave, rate))
    # wrapper.describe: preds[0] + preds[1] + 'this audio contains sound events: ' + preds[2][:-1] + '.'
    assert described["summary"] == "a<|endoftext|>b a<|endoftext|>b this audio contains sound events: " \
                                   "a<|endoftext|>b."
    assert pengi.describe((wave, rate), compat="none")["summary"] == "a a this audio contains sound events: a."

    import soundfile as sf

    sf.write(tmp_path / "clip.wav", wave, rate)
    result = CliRunner().invoke(main, ["generate", str(out), str(tmp_path / "clip.wav")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'clip.wav'}\ta<|endoftext|>b \n"  # the trailing space survives
    result = CliRunner().invoke(main, ["generate", str(out), str(tmp_path / "clip.wav"), "--json"])
    assert json.loads(result.stdout)["text"] == "a<|endoftext|>b "


def test_reference_text_decodes_as_the_pinned_transformers():
    """Leading space, literal end-of-text, the trailing stop token and the clean-up of
    spaces before punctuation that transformers 4.30 applied by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = byte_tokenizer()
    vocab = dict(base.get_vocab())
    vocab["Ġa"] = len(vocab)  # a GPT-2-like merged token: ' a'
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "a")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    ids = tok.encode(" a dog . it 's<|endoftext|>!") + [STOP]
    assert ids[0] == vocab["Ġa"]
    assert reference_text(tok, ids) == " a dog. it's<|endoftext|>! "
    assert reference_text(tok, ids) == reference_decode(tok, ids)


# ------------------------------------------------------------------ CLAPCap

def test_imported_clapcap_captions_as_msclap(tmp_path):
    lm_dir = tiny_gpt2_dir(tmp_path / "gpt2")
    k = 6
    raw = {"model": {
        "projection_dim": 24,
        "audio_encoder": {"name": "htsat", **TINY_HTSAT, "sample_rate": 44100, "clip_seconds": 7.0,
                          "mel_sample_rate": 32000, "fmax": 8000.0},
        "audio_mapper": {"name": "transformer", "prefix_length": k, "num_layers": 2, "num_heads": 8},
        "text_mapper": {"name": "none"},
        "lm": {"name": "gpt2", "pretrained": str(lm_dir)}}}
    torch.manual_seed(0)
    model = build_model(from_dict(raw)).eval()
    randomize(model, 1)
    front = torchlibrosa_front_end(32000, 1024, 320, 16, 50, 8000, prefix="audio_encoder.")
    renames = [("audio_encoder.", "clap.base.htsat."), ("audio_projection.", "clap.projection."),
               ("audio_mapper.", "clap_project."), ("lm.model.", "gpt.")]
    sd = {}
    for key, value in {**model.state_dict(), **front}.items():
        old, new = next((o, n) for o, n in renames if key.startswith(o))
        sd[new + key[len(old):]] = value.clone()
    script_gpt2(sd, "gpt.", k - 1, [B_LOWER, EOS, B_UPPER, STOP])  # "b<|endoftext|>B "
    torch.save({"model": module_prefixed(sd)}, tmp_path / "clapcap_weights_2023.pth")
    out = tmp_path / "clapcap"
    import_checkpoint("ms-clapcap", tmp_path / "clapcap_weights_2023.pth", out, lm=str(lm_dir))
    generate = read_recipe(out)["generate"]
    # CLAPWrapper.generate_caption(beam_size=5, entry_length=67, temperature=1.) -> caption.capitalize()
    assert {k: generate[k] for k in ("beam_size", "max_new_tokens", "temperature", "compat", "capitalize")} == \
        {"beam_size": 5, "max_new_tokens": 67, "temperature": 1.0, "compat": "pengi", "capitalize": True}

    pengi = pengi_kit.load(out)
    lm = pengi.model.lm
    wave, rate = clips(1)[0]
    x = pengi._waveform((wave, rate), None)
    with torch.no_grad():
        prefix = pengi.model.audio_mapper(F.normalize(pengi.model.audio_projection(pengi.model.audio_encoder(x[None])),
                                                      dim=-1))
    want = wrapper_beam(lm.model, lm.tokenizer, prefix, 5, 67)[0].capitalize()
    assert want == "B<|endoftext|>b "
    assert pengi.generate((wave, rate), "ignored") == [want]
    assert pengi.generate((wave, rate), "ignored", compat="none") == ["B"]
    assert pengi.generate((wave, rate), "ignored", compat="none", capitalize=False) == ["b"]


# ------------------------------------------------------------------ Microsoft CLAP 2023 pooling

def msclap_embedding(tower, text: str) -> torch.Tensor:
    """msclap's TextEncoder for GPT-2, on its own tokenisation (CLAPWrapper.preprocess_text):
    '!' added as the pad token, text + ' <|endoftext|>' padded to 77; pooled at
    torch.ne(input_ids, 0).sum(-1) - 1."""
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "!"})
    tok = tokenizer(text + " <|endoftext|>", max_length=77, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        hidden = tower(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    position = torch.ne(tok["input_ids"], 0).sum(-1) - 1
    return hidden[torch.arange(1), position]


def mask_pooled(encoder, text: str) -> torch.Tensor:
    tokens = encoder.tokenize([text], 77)
    with torch.no_grad():
        hidden = encoder.model(**tokens).last_hidden_state
    return hidden[0, tokens["attention_mask"].sum() - 1][None]


def test_gpt2_text_msclap_pooling():
    torch.manual_seed(0)
    encoder = gpt2_text(pretrained="", n_layer=2, n_embd=16, n_head=2, n_positions=128, pooling="msclap").eval()
    assert encoder.tokenizer.pad_token == "!" and encoder.tokenizer.pad_token_id == 0
    for text in ["Rain falls on a metal roof!", "Wow!! a dog!", "a dog barks"]:
        tokens = encoder.tokenize([text], 77)
        with torch.no_grad():
            got = encoder(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(got, msclap_embedding(encoder.model, text), rtol=0, atol=0)
        if "!" in text:  # pooled before end-of-text: not where the attention mask says
            assert (got - mask_pooled(encoder, text)).abs().max() > 1e-3
        else:
            torch.testing.assert_close(got, mask_pooled(encoder, text), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pooling must be 'last' or 'msclap'"):
        gpt2_text(pretrained="", n_layer=1, n_embd=16, n_head=2, pooling="first")


def test_ms_clap_2023_import_pools_as_msclap(tmp_path):
    audio = tiny_htsat(sample_rate=44100, clip_seconds=7.0, mel_sample_rate=32000, window_size=1024, hop_size=320,
                       fmax=14000)
    torch.manual_seed(1)
    text = gpt2_text(pretrained="", n_layer=1, n_embd=16, n_head=2, n_positions=128).eval()
    text_dir = save_hf_dir(text, tmp_path / "text")
    heads = torch.nn.ModuleDict({"audio_projection": Projection(audio.embed_dim, 12),
                                 "text_projection": Projection(16, 12)}).eval()
    randomize(heads, 2)
    sd = {**{f"caption_encoder.base.{k}": v for k, v in text.model.state_dict().items()},
          **{f"audio_encoder.projection.{k}": v for k, v in heads["audio_projection"].state_dict().items()},
          **{f"caption_encoder.projection.{k}": v for k, v in heads["text_projection"].state_dict().items()},
          **{f"audio_encoder.base.htsat.{k}": v
             for k, v in with_torchlibrosa(audio, 32000, 1024, 320, 16, 50, 14000).items()},
          "logit_scale": torch.tensor(3.0)}
    torch.save({"model": sd}, tmp_path / "CLAP_weights_2023.pth")
    out = tmp_path / "clap"
    import_checkpoint("ms-clap", tmp_path / "CLAP_weights_2023.pth", out, text_encoder=str(text_dir))
    assert json.loads((out / "clap.json").read_text())["text_encoder"]["pooling"] == "msclap"
    clap = load_clap(out)
    texts = ["Rain falls on a metal roof!", "Rain falls on a metal roof"]
    got = clap.embed_text(texts)
    with torch.no_grad():
        for row, t in zip(got, texts):
            want = F.normalize(heads["text_projection"](msclap_embedding(text.model, t)), dim=-1)[0]
            torch.testing.assert_close(row, want)
    with torch.no_grad():  # with '!', mask pooling would give another embedding
        masked = F.normalize(heads["text_projection"](mask_pooled(text, texts[0])), dim=-1)[0]
    assert (got[0] - masked).abs().max() > 1e-3


# ------------------------------------------------------------------ wrong formats, whole messages

def _t(*shape):
    return torch.zeros(shape)


FILES = {  # the characteristic keys of each published format, in its container
    "pengi": {"model": {"module.audio_encoder.base.htsat.patch_embed.proj.weight": _t(2),
                        "module.caption_encoder.base.embeddings.token_embedding.weight": _t(2),
                        "module.caption_decoder.gpt.transformer.wte.weight": _t(2)}, "epoch": 60},
    "ms-clapcap": {"model": {"clap.base.htsat.patch_embed.proj.weight": _t(2), "clap_project.linear.weight": _t(2),
                             "gpt.transformer.wte.weight": _t(2)}},
    "ms-clap": {"model": {"audio_encoder.base.conv_block1.conv1.weight": _t(2),
                          "caption_encoder.base.embeddings.word_embeddings.weight": _t(2),
                          "logit_scale": _t()}},
    "laion-clap": {"epoch": 45, "state_dict": {"module.audio_branch.patch_embed.proj.weight": _t(2),
                                               "module.text_branch.embeddings.word_embeddings.weight": _t(2),
                                               "module.logit_scale_a": _t()},
                   "optimizer": {"state": {}, "param_groups": []}},
    "panns": {"iteration": 140000, "model": {"conv_block1.conv1.weight": _t(2), "fc_audioset.weight": _t(2),
                                             "logmel_extractor.melW": _t(2)}},
}
NAMES = {"pengi": "Pengi", "ms-clapcap": "CLAPCap", "ms-clap": "Microsoft CLAP", "laion-clap": "LAION-CLAP",
         "panns": "PANNs Cnn14"}


@pytest.mark.parametrize("importer", list(FILES))
def test_a_file_of_another_format_is_named(tmp_path, importer):
    for fmt, content in FILES.items():
        if fmt == importer:
            continue
        path = tmp_path / f"{fmt}.pth"
        torch.save(content, path)
        with pytest.raises(ConversionError) as info:
            import_checkpoint(importer, path, tmp_path / "out")
        message = str(info.value)
        assert message.startswith(f"{path}: this is not a {NAMES[importer]} checkpoint (")
        assert message.endswith(f"); it looks like a {NAMES[fmt]} checkpoint: use `pengi-kit import {fmt}`"), message
        assert "non-tensor" not in message
    torch.save({"model": {"encoder.layer.0.weight": _t(2)}, "step": 3}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match=r"this is not a .* checkpoint \(no .* keys\); its 1 key "
                                              r"\(encoder.layer.0.weight\) fit none of the formats pengi-kit imports"):
        import_checkpoint(importer, tmp_path / "other.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_files_without_a_state_dict_say_what_they_hold(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="no state dict found: the file holds a list of 3 items"):
        import_checkpoint("panns", tmp_path / "list.pth", tmp_path / "out")
    torch.save({"epoch": 3, "weights": {"a": 1}}, tmp_path / "nested.pth")
    with pytest.raises(ConversionError, match="no state dict found: the file holds a dict with keys 'epoch', "
                                              "'weights' and no tensors"):
        import_checkpoint("laion-clap", tmp_path / "nested.pth", tmp_path / "out")
    content = {"model": dict(FILES["panns"]["model"], note="a string")}
    torch.save(content, tmp_path / "odd.pth")
    with pytest.raises(ConversionError, match=r"the state dict under 'model' holds non-tensor entries: note \(a str\)"):
        import_checkpoint("panns", tmp_path / "odd.pth", tmp_path / "out")


class AClassWithAVeryLongNameThatPushesTheRefusalMessageWellBeyondTwoHundredCharactersOfText:
    """Unpickling it would construct an arbitrary object."""


def test_long_messages_are_never_cut(tmp_path):
    cls = AClassWithAVeryLongNameThatPushesTheRefusalMessageWellBeyondTwoHundredCharactersOfText
    name = cls.__name__
    torch.save({"model": {"x": cls()}}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError) as info:
        import_checkpoint("pengi", tmp_path / "evil.pth", tmp_path / "out")
    message = str(info.value)
    assert len(message) > 200 and "\n" not in message
    assert message.endswith(f"{name} was not an allowed global by default)"), message

    deep = tmp_path / ("a-long-folder-name-" * 12)
    deep.mkdir()
    path = deep / "Cnn14_mAP=0.431.pth"
    torch.save(FILES["panns"], path)
    result = CliRunner().invoke(main, ["import", "laion-clap", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert len(result.output) > 300
    assert result.output.rstrip().endswith("it looks like a PANNs Cnn14 checkpoint: use `pengi-kit import panns`")
