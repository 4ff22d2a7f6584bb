"""Reusable contract tests: every registered component, built-in or third-party, must pass.

A plugin wires them into its own suite with one test::

    from pengi_kit.testing import check_component

    def test_contract():
        check_component("audio_encoder", "my-encoder")

``check_component`` builds the component from the ``example_args`` it was registered
with (or the keyword arguments given) and checks the contract of its kind: declared
attributes, output shapes, finite values, that gradients reach its parameters when it
trains, and that a frozen component stays frozen.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pengi_kit.contracts import PROTOCOLS


def _assert_protocol(module: Any, kind: str) -> None:
    protocol = PROTOCOLS[kind]
    assert isinstance(module, nn.Module), f"{kind} must be a torch.nn.Module, got {type(module).__name__}"
    assert isinstance(module, protocol), f"{type(module).__name__} does not satisfy {protocol.__name__}"


def _assert_trains_and_freezes(module: nn.Module, loss_fn: Any) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    assert params, f"{type(module).__name__} has no trainable parameters"
    module.zero_grad(set_to_none=True)
    loss_fn().backward()
    reached = [p for p in params if p.grad is not None and bool(p.grad.abs().sum() > 0)]
    assert reached, "no parameter received a gradient"
    assert params[0].grad is not None, "the first (input-side) parameter received no gradient"
    module.zero_grad(set_to_none=True)
    module.requires_grad_(False)
    out = loss_fn()
    assert not out.requires_grad, "a frozen component still produces a graph through its parameters"
    assert all(p.grad is None for p in module.parameters()), "a frozen component accumulated gradients"
    module.requires_grad_(True)


def check_audio_encoder(module: Any, batch: int = 2) -> None:
    """One embedding per clip (B, embed_dim); or, for an encoder with ``frames = True``, frames
    (B, F, embed_dim) and their mask (B, F) from ``forward(waveform, lengths)``, where a clip
    shorter than the batch keeps fewer frames, the same frames as alone."""
    _assert_protocol(module, "audio_encoder")
    assert isinstance(module.sample_rate, int) and module.sample_rate > 0, "sample_rate must be a positive int"
    assert module.clip_seconds is None or module.clip_seconds > 0, "clip_seconds must be None or positive"
    seconds = module.clip_seconds or 1.0
    wave = torch.rand(batch, int(seconds * module.sample_rate)) * 2 - 1
    module.eval()
    if getattr(module, "frames", False):
        half = wave.shape[1] // 2
        short = wave.clone()
        short[0, half:] = 0
        with torch.no_grad():
            out, mask = module(short, torch.tensor([half] + [wave.shape[1]] * (batch - 1)))
            alone, _ = module(short[:1, :half])
        assert out.dim() == 3 and out.shape[0] == batch and out.shape[2] == module.embed_dim, \
            f"expected frames (B, F, {module.embed_dim}), got {tuple(out.shape)}"
        assert mask.shape == out.shape[:2] and bool(mask[:, 0].all()), \
            "a mask (B, F) that keeps each clip's first frame"
        assert int(mask[0].sum()) < int(mask[1].sum()), "a shorter clip keeps fewer frames"
        kept = int(mask[0].sum())
        torch.testing.assert_close(out[0, :kept], alone[0, :kept], atol=1e-5, rtol=1e-5,
                                   msg="a clip's frames depend on the batch it is in")
        assert torch.isfinite(out).all(), "non-finite frames"
        module.train()
        _assert_trains_and_freezes(module, lambda: module(wave)[0].pow(2).mean())
        return
    out = module(wave)
    assert out.shape == (batch, module.embed_dim), f"expected {(batch, module.embed_dim)}, got {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite embedding"
    module.train()
    _assert_trains_and_freezes(module, lambda: module(wave).pow(2).mean())


def check_text_encoder(module: Any, batch: int = 2, max_length: int = 12) -> None:
    _assert_protocol(module, "text_encoder")
    tokens = module.tokenize(["a dog barks", "rain on a tin roof and distant thunder"][:batch], max_length)
    assert tokens["input_ids"].shape == (batch, max_length), "tokenize must pad/truncate to max_length"
    module.eval()
    out = module(tokens["input_ids"], tokens["attention_mask"])
    assert out.shape == (batch, module.embed_dim), f"expected {(batch, module.embed_dim)}, got {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite embedding"
    assert not torch.allclose(out[0], out[1]), "different texts gave the same embedding"
    _assert_trains_and_freezes(module, lambda: module(**tokens).pow(2).mean())


def check_mapper(module: Any, in_dim: int, out_dim: int, batch: int = 2) -> None:
    _assert_protocol(module, "mapper")
    if getattr(module, "variable_length", False):  # frames -> tokens and their mask
        x, mask = torch.randn(batch, 7, in_dim), torch.ones(batch, 7, dtype=torch.long)
        mask[0, 3:] = 0
        tokens, kept = module(x, mask)
        assert tokens.dim() == 3 and tokens.shape[0] == batch and tokens.shape[2] == out_dim, tuple(tokens.shape)
        assert kept.shape == tokens.shape[:2] and int(kept[0].sum()) < int(kept[1].sum()), "the tokens' mask"
        module.eval()
        with torch.no_grad():  # a clip's tokens are those it gets alone
            alone, _ = module(x[:1, :3], mask[:1, :3])
            torch.testing.assert_close(tokens[0, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-5,
                                       msg="a clip's tokens depend on its batch")
        module.train()
        _assert_trains_and_freezes(module, lambda: module(x, mask)[0].pow(2).mean())
        return
    k = module.prefix_length
    x = torch.randn(batch, in_dim)
    if module.accepts_sequence:  # at most k positions: the prompt mapper of Pengi's variant takes no more
        x = torch.randn(batch, k - 1, in_dim)
        mask = torch.ones(batch, k - 1, dtype=torch.long)
        out = module(x, mask)
        if getattr(module, "mask_padding", True) and k > 2:  # what the mask hides changes nothing
            mask[:, -1] = 0
            changed = x.clone()
            changed[:, -1] = 100.0
            module.eval()
            with torch.no_grad():
                torch.testing.assert_close(module(changed, mask), module(x, mask), atol=1e-5, rtol=1e-5,
                                           msg="masked positions change the prefix")
            module.train()
            mask[:, -1] = 1
    else:
        out = module(x)
    assert out.shape == (batch, k, out_dim), f"expected {(batch, k, out_dim)}, got {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite prefix"
    _assert_trains_and_freezes(module, lambda: (module(x, mask) if module.accepts_sequence else module(x)).pow(2).mean())


def check_causal_lm(module: Any, batch: int = 2, length: int = 5) -> None:
    _assert_protocol(module, "causal_lm")
    module.eval()
    ids = torch.randint(0, len(module.tokenizer), (batch, length))
    embeds = module.embed(ids)
    assert embeds.shape == (batch, length, module.hidden_size)
    mask = torch.ones(batch, length, dtype=torch.long)
    full, _ = module(embeds, mask)
    assert full.shape[:2] == (batch, length) and full.shape[2] >= len(module.tokenizer)
    # the KV cache must reproduce the uncached logits, also after reordering the batch
    _, past = module(embeds[:, :-1], mask[:, :-1], use_cache=True)
    order = torch.arange(batch).flip(0)
    past = module.reorder_cache(past, order)
    last, _ = module(embeds[order, -1:], mask, past)
    torch.testing.assert_close(last[:, 0], full[order, -1], atol=1e-4, rtol=1e-4)
    text = module.tokenizer.decode(module.tokenizer("hello world")["input_ids"])
    assert "hello world" in text, "tokenizer does not round-trip text"
    module.train()
    # through embed(): the input-side parameter is the token embedding, untied from the head in most LMs
    _assert_trains_and_freezes(module, lambda: module(module.embed(ids), mask)[0].float().pow(2).mean())


def check_batch_invariance(lm: Any, prefixes: list[torch.Tensor], *, decodings: list[Any] | None = None,
                           batch_sizes: tuple[int, ...] = (1, 8, 32), continuations: list[list[list[int]]] | None = None,
                           atol: float = 1e-5) -> None:
    """Assert that ``lm`` gives every row the same tokens and scores whatever batch it is in.

    ``prefixes``: rows of prefix embeddings (P_i, D), of different lengths (repeated in turn to
    fill the largest batch size). Each row is decoded alone and in batches of each of
    ``batch_sizes`` (padded on the left, :func:`pengi_kit.generation.pad_prefixes`), with each of
    ``decodings`` (default: greedy, and beam search of 3 in both ``compat`` modes; 8 new tokens),
    also over the static KV cache, and joining a :class:`~pengi_kit.generation.Stream` of 8 slots
    at random steps (``compat="none"``, and sampling there too); the tokens must be identical
    (fp32, CPU). The summed
    log-probabilities of ``continuations`` (default: three of 1 to 4 tokens per row) must agree
    across batch sizes within ``atol``. A plugin's LM passes it, or the search would give a clip
    another answer in a server's batch than alone::

        from pengi_kit.testing import check_batch_invariance

        def test_my_lm_is_batch_invariant():
            lm = my_lm(...).eval()
            check_batch_invariance(lm, [torch.randn(n, lm.hidden_size) for n in (4, 9, 12, 6)])
    """
    import random

    from pengi_kit.generation import Decoding, Stream, generate, pad_prefixes, score

    rows = max(batch_sizes)
    prefixes = [prefixes[i % len(prefixes)] for i in range(rows)]
    if decodings is None:
        decodings = [Decoding(method="greedy", max_new_tokens=8), Decoding(beam_size=3, max_new_tokens=8),
                     Decoding(beam_size=3, max_new_tokens=8, compat="pengi")]
    if continuations is None:
        gen = torch.Generator().manual_seed(0)
        vocab = len(lm.tokenizer)
        continuations = [[torch.randint(0, vocab, (int(n),), generator=gen).tolist()
                          for n in torch.randint(1, 5, (3,), generator=gen)] for _ in prefixes]
    continuations = [continuations[i % len(continuations)] for i in range(rows)]

    def batches(size: int) -> list[tuple[torch.Tensor, torch.Tensor | None, slice]]:
        return [(*pad_prefixes(prefixes[i: i + size]), slice(i, i + size)) for i in range(0, rows, size)]

    solo: dict[str, list[list[int]]] = {}  # each decoding's tokens of every row alone, computed once

    def alone_of(cfg: Any) -> list[list[int]]:
        if repr(cfg) not in solo:
            solo[repr(cfg)] = [generate(lm, p[None], cfg)[0] for p in prefixes]
        return solo[repr(cfg)]

    with torch.no_grad():
        for cfg in decodings:
            alone = alone_of(cfg)
            for size in batch_sizes:
                for static in (False, True):
                    got = [t for batch, mask, _ in batches(size)
                           for t in generate(lm, batch, cfg, prefix_mask=mask, static=static)]
                    bad = [i for i, (a, b) in enumerate(zip(alone, got)) if a != b]
                    assert not bad, (f"{cfg.method} (compat {cfg.compat}, static {static}) at batch {size}: row "
                                     f"{bad[0]} of length {len(prefixes[bad[0]])} gives {got[bad[0]]} in the batch "
                                     f"and {alone[bad[0]]} alone")
        streamed = [cfg for cfg in decodings if cfg.compat == "none"] + [Decoding(method="sample", seed=3, top_k=20,
                                                                                  max_new_tokens=8)]
        for cfg in streamed:
            alone = alone_of(cfg)
            stream = Stream(lm, rows=8, length=max(map(len, prefixes)) + cfg.max_tokens)
            pending, got, draw = list(range(rows)), {}, random.Random(0)
            while pending or stream.busy:
                for _ in range(draw.randint(0, 3)):  # rows join at random steps, several at once or none
                    if pending:
                        stream.add(pending[0], prefixes[pending.pop(0)], cfg)
                got.update(stream.step())
            bad = [i for i in range(rows) if got[i] != alone[i]]
            assert not bad, (f"{cfg.method} joining a running decode: row {bad[0]} of length {len(prefixes[bad[0]])} "
                             f"gives {got[bad[0]]} and {alone[bad[0]]} alone")
        reference = [score(lm, p[None], [c])[0] for p, c in zip(prefixes, continuations)]
        for size in batch_sizes:
            got = [s for batch, mask, part in batches(size)
                   for s in score(lm, batch, continuations[part], prefix_mask=mask)]
            worst = max(float((a - b).abs().max()) for a, b in zip(reference, got))
            assert worst <= atol, f"scores at batch {size} differ from batch 1 by {worst:.2e} (> {atol})"


def check_component(kind: str, name: str, registry: Any | None = None, **args: Any) -> None:
    """Build ``kind``/``name`` from its registered ``example_args`` (updated by ``args``) and check it."""
    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    spec = registry.get(kind, name)
    kwargs = {**spec.example_args, **args}
    torch.manual_seed(0)
    module = spec.load()(**kwargs)
    if kind == "audio_encoder":
        check_audio_encoder(module)
    elif kind == "text_encoder":
        check_text_encoder(module)
    elif kind == "mapper":
        check_mapper(module, kwargs["in_dim"], kwargs["out_dim"])
    elif kind == "causal_lm":
        check_causal_lm(module)
    else:
        raise ValueError(f"no contract for kind {kind!r}")


def registered_components(registry: Any | None = None) -> list[tuple[str, str]]:
    """(kind, name) of every registered model component: parametrise a test with it."""
    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    return [(s.kind, s.name) for s in registry.specs() if s.kind in PROTOCOLS]


def tiny_recipe(out_dir: Any, *, text_encoder: bool | dict[str, Any] = False,
                train: dict[str, Any] | None = None, **components: Any) -> dict[str, Any]:
    """A Pengi recipe (as a dict) small enough to train in seconds offline on the synthetic
    corpus: CNN14 width 2, a one-layer GPT-2 with the corpus's word tokenizer, an MLP audio
    mapper (k = 2), 16 prompt and 16 target tokens, 6 steps of 8 examples.

    ``text_encoder``: ``False`` (the default) has none, so the prompt's LM embeddings feed a
    one-layer transformer text mapper (k = 16); ``True`` adds a one-layer CLIP text encoder
    (``clip-text``, fresh, 16 wide) and a dict is the slot itself, e.g. ``{"name":
    "my-encoder", ...}``; with either, the text mapper is an MLP (k = 2). ``train`` updates
    the ``[train]`` table, e.g. ``train={"max_steps": 2, "save_every": 1}``. Any other
    keyword replaces the ``[model]`` key of its name, a whole slot (``audio_encoder={"name":
    "my-encoder", ...}``, ``lm={...}``) or a value (``prompt_length=48``)."""
    model: dict[str, Any] = {
        "projection_dim": 16, "prompt_length": 16, "target_length": 16,
        "audio_encoder": {"name": "cnn14", "sample_rate": 16000, "width": 2, "clip_seconds": 0.5,
                          "spec_augment": False},
        "audio_mapper": {"name": "mlp", "prefix_length": 2},
        "text_mapper": {"name": "transformer", "prefix_length": 16, "num_layers": 1, "num_heads": 2},
        "lm": {"name": "gpt2", "pretrained": "", "tokenizer": "pengi_kit.data.synthetic:tokenizer",
               "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "trainable": True},
    }
    has_text_encoder = text_encoder is not False and text_encoder is not None
    if has_text_encoder:
        model["text_mapper"] = {"name": "mlp", "prefix_length": 2}
    model.update(components)
    if text_encoder is True:
        text_encoder = {"name": "clip-text", "pretrained": "", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                        "projection_dim": 8, "max_positions": model["prompt_length"], "trainable": True}
    if has_text_encoder:
        model["text_encoder"] = text_encoder
    return {
        "name": "tiny", "seed": 0, "model": model,
        "data": {"synthetic_train_size": 48, "synthetic_valid_size": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"batch_size": 8, "max_steps": 6, "log_every": 1, "output_dir": str(out_dir), **(train or {})},
        "generate": {"method": "greedy", "max_new_tokens": 4},
    }


def check_trains(out_dir: Any, steps: int = 6, **components: dict[str, Any]) -> Any:
    """Train :func:`tiny_recipe` with ``components`` for ``steps`` steps, check that every loss
    is finite and the last is below the first, then load the checkpoint and generate; returns
    the loaded :class:`pengi_kit.Pengi`. A plugin's end-to-end test in one call::

        check_trains(tmp_path, audio_encoder={"name": "my-encoder", "channels": 4})
    """
    import json
    import math
    from pathlib import Path

    import pengi_kit
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict

    raw = tiny_recipe(out_dir, **components)
    raw["train"]["max_steps"] = steps
    Trainer(from_dict(raw), progress=False).fit()
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), f"losses: {losses}"
    assert losses[-1] < losses[0], f"the loss did not go down: {losses}"
    pengi = pengi_kit.load(out_dir)
    rate = pengi.model.sample_rate
    texts = pengi.generate([(torch.rand(rate) * 0.2 - 0.1, rate)], "this is a sound of")
    assert len(texts) == 1 and isinstance(texts[0], str)
    return pengi


def check_installed(plugin: str, distribution: str, components: list[tuple[str, str]]) -> None:
    """Check in a fresh interpreter, as a user would see it, that the entry point ``plugin`` of the
    installed ``distribution`` loads without error and registers each (kind, name) of ``components``."""
    import json
    import subprocess
    import sys

    def cli(*args: str) -> Any:
        return json.loads(subprocess.run([sys.executable, "-m", "pengi_kit", *args, "--json"], capture_output=True,
                                         text=True, check=True).stdout)

    found = next((p for p in cli("plugins") if p["name"] == plugin), None)
    assert found is not None, f"no installed plugin {plugin!r} (is {distribution} installed?)"
    assert found["distribution"] == distribution and not found["error"], found
    listed = {(r["kind"], r["name"]): r["plugin"] for r in cli("list-components")}
    for component in components:
        assert listed.get(component) == plugin, f"{component} is not registered by {plugin!r}: {listed.get(component)}"
