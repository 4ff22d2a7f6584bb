"""Batched KV-cached decoding returns exactly the tokens of plain uncached decoders that
run one clip at a time and re-run the whole sequence at every step (oracles.py), in
the default mode and in compat="pengi" (the reference wrapper's beam search)."""
import pytest
import torch
from oracles import beam, greedy, pengi_beam

from pengi_kit.components.hf_causal_lm import gpt2
from pengi_kit.generation import Decoding, generate, stop_token_id

P, D = 6, 32


def ramp_lm(stop: int | None, weight: float = 4.0, seed: int = 0):
    """A tiny random GPT-2 whose ``stop`` id (default: end-of-text) grows likelier with
    position at a pace that depends on the prefix and the tokens, so rows end after
    different numbers of steps. The head is untied from the (enlarged) token embeddings,
    so that tokens matter and do not simply repeat."""
    torch.manual_seed(3)
    lm = gpt2(pretrained="", n_layer=2, n_embd=D, n_head=2, n_positions=64).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lm.model.transformer.wte.weight.mul_(10)
        vocab = lm.model.transformer.wte.weight.shape[0]
        lm.model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, D, generator=gen) / 2)
        u = torch.randn(D, generator=gen)
        u /= u.norm()
        lm.model.transformer.wpe.weight += (torch.arange(64.0) - P).clamp(min=0)[:, None] / 10 * u
        lm.model.lm_head.weight[lm.eos_token_id if stop is None else stop] = weight * u
    return lm


@pytest.fixture(scope="module")
def eos_lm():
    return ramp_lm(None)


@pytest.fixture(scope="module")
def space_lm():
    return ramp_lm(220)  # the byte tokenizer's ' ' is 220, as GPT-2's


def prefixes(n=12, seed=0):
    return torch.randn(n, P, D, generator=torch.Generator().manual_seed(seed))


def test_default_beam_with_every_option_equals_uncached(eos_lm):
    x, eos = prefixes(), eos_lm.eos_token_id
    for opts in (dict(beam_size=3), dict(beam_size=4, length_penalty=1.5, min_new_tokens=2,
                                         no_repeat_ngram_size=2, temperature=0.8)):
        got = generate(eos_lm, x, Decoding(max_new_tokens=10, **opts))
        want = [beam(eos_lm, x[i:i + 1], opts["beam_size"], 10, eos, opts.get("length_penalty", 1.0),
                     opts.get("min_new_tokens", 0), opts.get("no_repeat_ngram_size", 0),
                     opts.get("temperature", 1.0)) for i in range(len(x))]
        assert got == want
        lengths = sorted(len(t) for t in got)
        assert len(set(lengths)) >= 3  # clips leave the batch at different steps


def test_default_greedy_with_bans_equals_uncached(eos_lm):
    x, eos = prefixes(), eos_lm.eos_token_id
    got = generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=10))
    assert got == [greedy(eos_lm, x[i:i + 1], 10, eos) for i in range(len(x))]
    assert len({len(t) for t in got}) >= 3
    got = generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=10, min_new_tokens=3, no_repeat_ngram_size=1))
    assert got == [greedy(eos_lm, x[i:i + 1], 10, eos, 3, 1) for i in range(len(x))]
    assert all(len(t) >= 3 and len(set(t)) == len(t) for t in got)


@pytest.mark.parametrize("beam_size,temperature", [(3, 1.0), (1, 1.0), (4, 0.7)])
def test_pengi_compat_beam_equals_the_reference_algorithm_uncached(space_lm, beam_size, temperature):
    x = prefixes()
    cfg = Decoding(beam_size=beam_size, max_new_tokens=8, temperature=temperature, compat="pengi")
    stop = stop_token_id(space_lm, cfg)
    assert stop == 220 and stop != space_lm.eos_token_id
    got = generate(space_lm, x, cfg)
    assert got == [pengi_beam(space_lm, x[i:i + 1], beam_size, 8, stop, temperature) for i in range(len(x))]
    lengths = sorted(len(t) for t in got)
    print(lengths)
    assert len(set(lengths)) >= 3  # clips stop at different steps
    if beam_size == 3:  # the reference's ranking is not the textbook one: the oracle tells them apart
        assert got != [beam(space_lm, x[i:i + 1], beam_size, 8, stop) for i in range(len(x))]


def test_pengi_compat_differs_from_default_and_greedy_stops_on_220(space_lm):
    x = prefixes()
    compat = generate(space_lm, x, Decoding(method="greedy", max_new_tokens=8, compat="pengi"))
    assert compat == [greedy(space_lm, x[i:i + 1], 8, 220) for i in range(len(x))]
    assert compat == generate(space_lm, x, Decoding(beam_size=1, max_new_tokens=8, compat="pengi"))
    default = generate(space_lm, x, Decoding(method="greedy", max_new_tokens=8))
    assert any(220 in row for row in default) and not any(220 in row for row in compat)
    assert Decoding(compat="pengi").max_tokens == 67 and Decoding().max_tokens == 30


def test_rows_do_not_interact_and_order_is_kept(eos_lm, space_lm):
    x = prefixes(5, seed=1)
    for lm, cfg in ((eos_lm, Decoding(beam_size=3, max_new_tokens=9)),
                    (space_lm, Decoding(beam_size=3, max_new_tokens=9, compat="pengi")),
                    (eos_lm, Decoding(method="greedy", max_new_tokens=9))):
        together = generate(lm, x, cfg)
        assert together == [generate(lm, x[i:i + 1], cfg)[0] for i in range(len(x))]
        assert generate(lm, x.flip(0), cfg) == together[::-1]


def test_stop_strings_end_beams_and_rows(eos_lm):
    x = prefixes(4)
    tok = eos_lm.tokenizer
    free = generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=10))
    row = next(r for r in free if len(r) >= 4)
    stop = tok.decode(row[2:4])  # a string the free run produces
    cut = generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=10, stop=[stop]))
    for a, b in zip(free, cut):
        text = tok.decode(b)
        assert b == a[: len(b)]
        assert (stop in text and stop not in tok.decode(b[:-1])) or (b == a and stop not in tok.decode(a))
    beams = generate(eos_lm, x, Decoding(beam_size=3, max_new_tokens=10, stop=[stop]))
    assert all(stop not in tok.decode(b[:-1]) for b in beams)


def test_sampling_is_seeded_and_filters_hold(eos_lm):
    x = prefixes(4)
    a = generate(eos_lm, x, Decoding(method="sample", seed=1, max_new_tokens=6, temperature=2.0))
    assert a == generate(eos_lm, x, Decoding(method="sample", seed=1, max_new_tokens=6, temperature=2.0))
    assert a != generate(eos_lm, x, Decoding(method="sample", seed=2, max_new_tokens=6, temperature=2.0))
    assert generate(eos_lm, x, Decoding(method="sample", seed=5, top_k=1, max_new_tokens=6)) == \
        generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=6))
    assert generate(eos_lm, x, Decoding(method="sample", seed=5, top_p=1e-6, max_new_tokens=6)) == \
        generate(eos_lm, x, Decoding(method="greedy", max_new_tokens=6))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="compat='pengi' beam search .* no length_penalty, stop"):
        Decoding(compat="pengi", length_penalty=0.5, stop=["."])
    with pytest.raises(ValueError, match="'none' or 'pengi'"):
        Decoding(compat="reference")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Decoding(temperature=0)
    Decoding(compat="pengi", temperature=0)  # the reference treats it as 1
    with pytest.raises(ValueError, match="top_p"):
        Decoding(top_p=0)
    with pytest.raises(TypeError, match="beam_sise"):
        Decoding.from_dict({"beam_sise": 3})
    with pytest.raises(ValueError, match="'beam', 'greedy' or 'sample'"):
        Decoding.from_dict({"method": "nucleus"})


def test_preallocated_cache_equals_the_growing_one(eos_lm):
    """new_cache + reorder_cache(keep_first=prefix) against transformers' DynamicCache."""
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, P, D, generator=gen)
    ones = lambda rows, n: torch.ones(rows, n, dtype=torch.long)  # noqa: E731
    outs = []
    for cache in (eos_lm.new_cache(P + 6), DynamicCache()):
        logits, past = eos_lm(prefix, ones(2, P), cache, use_cache=True)
        past = eos_lm.reorder_cache(past, torch.tensor([0, 0, 0, 1, 1, 1]))  # 3 beams per clip
        steps = [logits[:, -1]]
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            clips = 2 if step <= 3 else 1  # at step 3 the first clip leaves the batch
            order = torch.cat([c * 3 + torch.randint(0, 3, (3,), generator=g) for c in range(clips)])
            if step == 3:
                order = torch.tensor([3, 4, 5])
            rows = len(order)
            if isinstance(cache, DynamicCache):
                past = eos_lm.reorder_cache(past, order)
            else:
                past = eos_lm.reorder_cache(past, order, keep_first=P if step != 3 else 0)
            if step == 3:
                continue
            token = torch.randint(0, 256, (rows, 1), generator=g)
            logits, past = eos_lm(eos_lm.embed(token), ones(rows, P + step + 1 - (step > 3)), past)
            steps.append(logits[:, -1])
        outs.append(steps)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
