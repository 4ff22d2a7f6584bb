"""The static-shape decoding path (the one generate.compile captures on CUDA) returns the
default path's tokens, with every one-token step of the same shapes while clips finish
at different steps; on the CPU generate.compile is a no-op with a note."""
import pytest
import torch
from test_decoding_oracle import prefixes, ramp_lm

from pengi_kit import generation
from pengi_kit.generation import Decoding, generate

SETTINGS = [
    dict(method="greedy"),
    dict(method="greedy", min_new_tokens=2, no_repeat_ngram_size=2),
    dict(method="sample", seed=3, top_k=5),
    dict(beam_size=3),
    dict(beam_size=4, length_penalty=1.5, min_new_tokens=2, no_repeat_ngram_size=2, temperature=0.8),
]


@pytest.fixture(scope="module")
def eos_lm():
    return ramp_lm(None)


@pytest.fixture(scope="module")
def space_lm():
    return ramp_lm(220)


def step_shapes(lm):
    """Records (embeds, mask, cache length) of every one-token call of ``lm``."""
    shapes = []

    def hook(module, args, kwargs):
        embeds, mask, past = args[:3]
        if embeds.shape[1] == 1:
            shapes.append((tuple(embeds.shape), tuple(mask.shape), past.layers[0].keys.shape))

    return shapes, lm.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("opts", SETTINGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_static_path_gives_the_default_tokens_with_fixed_shapes(eos_lm, opts):
    x = prefixes()
    cfg = Decoding(max_new_tokens=10, **opts)
    want = generate(eos_lm, x, cfg)
    shapes, handle = step_shapes(eos_lm)
    try:
        got = generate(eos_lm, x, cfg, static=True)
    finally:
        handle.remove()
    assert got == want
    assert len({len(t) for t in got}) >= 3  # rows finish at different steps: padded, not removed
    rows = len(x) * (opts.get("beam_size", 5) if opts.get("method", "beam") == "beam" else 1)
    assert set(shapes) == {((rows, 1, 32), (rows, 6 + 10), (rows, 2, 6 + 10, 16))}


@pytest.mark.parametrize("beam_size", [1, 3])
def test_static_path_in_pengi_compat(space_lm, beam_size):
    x = prefixes()
    cfg = Decoding(beam_size=beam_size, max_new_tokens=8, compat="pengi")
    got = generate(space_lm, x, cfg, static=True)
    assert got == generate(space_lm, x, cfg)
    assert len({len(t) for t in got}) >= 3


def test_compile_is_a_noop_with_a_note_on_cpu(eos_lm, capsys, monkeypatch):
    monkeypatch.setattr(generation, "_noted", set())
    x = prefixes(4)
    cfg = Decoding(max_new_tokens=6, beam_size=2)
    assert generate(eos_lm, x, Decoding(max_new_tokens=6, beam_size=2, compile=True)) == generate(eos_lm, x, cfg)
    generate(eos_lm, x, Decoding(max_new_tokens=6, beam_size=2, compile=True))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA only" in err and "cpu" in err


def test_the_compiled_step_is_traced_once_and_gives_the_same_tokens(eos_lm, monkeypatch):
    """Dynamo traces the step (a counting backend instead of inductor, which would take
    minutes on the CPU): once for all steps of a search, and not again for the next batch."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(generation, "COMPILE_OPTIONS", {"backend": backend, "dynamic": False})
    monkeypatch.setattr(generation, "_compiled_step", None)
    monkeypatch.setattr(generation, "_can_compile", lambda device: True)
    torch._dynamo.reset()
    try:
        x = prefixes(4)
        for opts in (dict(method="greedy"), dict(beam_size=2)):
            cfg = Decoding(max_new_tokens=8, **opts)
            want = generate(eos_lm, x, cfg)
            before = len(graphs)
            assert generate(eos_lm, x, Decoding(max_new_tokens=8, compile=True, **opts)) == want
            traced = len(graphs) - before
            assert 1 <= traced <= 2  # per row count (a graph break would add one), not per step
            assert generate(eos_lm, x, Decoding(max_new_tokens=8, compile=True, **opts)) == want
            assert len(graphs) - before == traced  # the next batch of the same size reuses it
    finally:
        torch._dynamo.reset()
