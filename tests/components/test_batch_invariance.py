"""One decoder for every shape (pengi_kit.testing.check_batch_invariance): rows whose prefixes
differ in length by up to 3x get the same tokens and scores alone and in batches of 8 and 32,
for every registered causal LM and for GPT-2, Llama, Qwen2 and Qwen3 configurations."""
import pytest
import torch
from test_causal_lm import ARCHITECTURES, D, ending_lm, tiny_lm

from pengi_kit.generation import Decoding, generate, pad_prefixes, score
from pengi_kit.plugins import registry
from pengi_kit.testing import check_batch_invariance

LENGTHS = (4, 12, 7, 9, 5, 11, 6, 10)  # 3x between the shortest and the longest


def _prefixes(dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=gen) for n in LENGTHS]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_is_batch_invariant(architecture):
    prefixes = _prefixes(D)
    lm = ending_lm(architecture, [p[None] for p in prefixes])
    greedy = [generate(lm, p[None], Decoding(method="greedy", max_new_tokens=8))[0] for p in prefixes]
    assert len({len(t) for t in greedy}) >= 2 and len({tuple(t) for t in greedy}) == len(LENGTHS)  # rows differ, end apart
    check_batch_invariance(lm, prefixes)


@pytest.mark.parametrize("name", [s.name for s in registry().specs("causal_lm")])
def test_every_registered_lm_is_batch_invariant(name):
    spec = registry().get("causal_lm", name)
    torch.manual_seed(0)
    lm = spec.load()(**spec.example_args).eval()
    check_batch_invariance(lm, _prefixes(lm.hidden_size), batch_sizes=(1, 8))


def test_padding_changes_nothing_that_a_row_sees():
    """A ragged batch equals each row decoded and scored alone, and scoring over the forked cache
    equals an uncached forward pass over prefix and continuation."""
    lm = tiny_lm("gpt2")  # absolute positions: a position counted from the padded index would show
    prefixes = _prefixes(D)[:3]
    batch, mask = pad_prefixes(prefixes)
    assert mask is not None and mask.sum(1).tolist() == [len(p) for p in prefixes]
    options = Decoding(method="greedy", max_new_tokens=6)
    assert generate(lm, batch, options, prefix_mask=mask) == [generate(lm, p[None], options)[0] for p in prefixes]
    seqs = [[[3, 4, 5], [6]], [[7, 8]], [[9], [10, 11, 12, 13]]]
    scores = score(lm, batch, seqs, prefix_mask=mask)
    with torch.no_grad():
        for p, row, got in zip(prefixes, seqs, scores):
            for seq, value in zip(row, got):
                embeds = torch.cat([p, lm.embed(torch.tensor(seq))])[None]
                logits, _ = lm(embeds, torch.ones(1, len(embeds[0]), dtype=torch.long))
                logp = torch.log_softmax(logits[0].float(), -1)
                want = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(seq))
                assert abs(float(value) - want) < 1e-5
    assert pad_prefixes(_prefixes(D)[:1] * 2)[1] is None  # equal lengths: no mask, Pengi's case
