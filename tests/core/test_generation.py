"""Decoding over the KV cache against plain uncached decoding that re-runs the whole sequence."""

import pytest
import torch
import torch.nn.functional as F

from pengi_kit.components.hf_causal_lm import gpt2
from pengi_kit.generation import Decoding, generate


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    model = gpt2(pretrained="", n_layer=2, n_embd=32, n_head=2, n_positions=64).eval()
    with torch.no_grad():  # peaky, with end-of-text likely enough to end some rows early
        model.model.lm_head.weight.mul_(8)
        torch.manual_seed(0)
        hidden = model.model(inputs_embeds=torch.randn(4, 6, 32), output_hidden_states=True).hidden_states[-1]
        direction = hidden.mean((0, 1))
        model.model.lm_head.weight[model.eos_token_id] += 4 * direction / direction.norm()
    return model


@torch.no_grad()
def _logp(lm, prefix, tokens):
    seq = torch.cat([prefix, lm.embed(torch.tensor([tokens], dtype=torch.long))], 1) if tokens else prefix
    logits, _ = lm(seq, torch.ones(1, seq.shape[1], dtype=torch.long))
    return F.log_softmax(logits[0, -1].float(), -1)


def _uncached_greedy(lm, prefix, steps):
    tokens = []
    for _ in range(steps):
        nxt = int(_logp(lm, prefix, tokens).argmax())
        if nxt == lm.eos_token_id:
            break
        tokens.append(nxt)
    return tokens


def _uncached_beam(lm, prefix, k, steps):
    """Textbook beam search, one clip at a time, full recompute at each step."""
    beams, finished = [(0.0, [])], []
    for step in range(steps):
        cands = []
        for score, toks in beams:
            top = _logp(lm, prefix, toks).topk(2 * k)  # the global top 2k lie within each beam's top 2k
            for value, tok in zip(top.values.tolist(), top.indices.tolist()):
                cands.append((score + value, toks, tok))
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, toks, tok) in enumerate(cands[: 2 * k]):
            if tok == lm.eos_token_id:
                if rank < k:
                    finished.append((score / (step + 1), toks))
            elif len(beams) < k:
                beams.append((score, toks + [tok]))
        if len(finished) >= k:
            finished = sorted(finished, key=lambda h: -h[0])[:k]
            if finished[-1][0] >= beams[0][0] / (step + 1):
                break
    else:
        finished += [(s / steps, t) for s, t in beams]
    return max(finished, key=lambda h: h[0])[1]


def test_cached_greedy_and_beam_equal_uncached(lm):
    torch.manual_seed(0)
    prefix = torch.randn(4, 6, 32)  # the prefixes the fixture tuned end-of-text for
    greedy = generate(lm, prefix, Decoding(method="greedy", max_new_tokens=8))
    beam = generate(lm, prefix, Decoding(method="beam", beam_size=3, max_new_tokens=8))
    for i in range(4):
        assert greedy[i] == _uncached_greedy(lm, prefix[i:i + 1], 8)
        assert beam[i] == _uncached_beam(lm, prefix[i:i + 1], 3, 8)
    lengths = [len(t) for t in greedy + beam]
    assert min(lengths) < 8 and max(lengths) == 8  # rows end by end-of-text and by the length limit


def test_batched_rows_do_not_interact(lm):
    prefix = torch.randn(3, 6, 32)
    together = generate(lm, prefix, Decoding(beam_size=4, max_new_tokens=6))
    alone = [generate(lm, prefix[i:i + 1], Decoding(beam_size=4, max_new_tokens=6))[0] for i in range(3)]
    assert together == alone


def test_sampling_is_seeded_and_top_k_1_is_greedy(lm):
    prefix = torch.randn(2, 6, 32)
    a = generate(lm, prefix, Decoding(method="sample", seed=1, max_new_tokens=6, temperature=2.0))
    b = generate(lm, prefix, Decoding(method="sample", seed=1, max_new_tokens=6, temperature=2.0))
    assert a == b
    assert generate(lm, prefix, Decoding(method="sample", seed=5, top_k=1, max_new_tokens=6)) == \
        generate(lm, prefix, Decoding(method="greedy", max_new_tokens=6))


def test_min_tokens_and_no_repeat_ngram(lm):
    prefix = torch.randn(2, 6, 32)
    out = generate(lm, prefix, Decoding(method="greedy", min_new_tokens=5, max_new_tokens=12,
                                        no_repeat_ngram_size=2))
    for row in out:
        assert len(row) >= 5
        pairs = list(zip(row, row[1:]))
        assert len(pairs) == len(set(pairs))


def test_bad_options_are_named():
    with pytest.raises(TypeError, match="beam_sise"):
        Decoding.from_dict({"beam_sise": 3})
    with pytest.raises(ValueError, match="'beam', 'greedy' or 'sample'"):
        Decoding.from_dict({"method": "nucleus"})
