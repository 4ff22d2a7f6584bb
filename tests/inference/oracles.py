"""Plain decoders for the oracle tests: one clip at a time, the whole sequence re-run
through the LM at every step (no KV cache), written for clarity rather than speed."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def last_logits(lm, prefix, tokens):
    """Logits after ``prefix`` (1, P, D) and ``tokens``, from a full forward pass."""
    seq = prefix if not tokens else torch.cat([prefix, lm.embed(torch.tensor([tokens]))], 1)
    logits, _ = lm(seq, torch.ones(1, seq.shape[1], dtype=torch.long))
    return logits[0, -1]


def banned(tokens, step, min_new, ngram, stop):
    """Token ids forbidden after ``tokens``: the stop id before ``min_new``, repeated n-grams."""
    out = [stop] if step < min_new else []
    if ngram and len(tokens) >= ngram:
        tail = tokens[len(tokens) - ngram + 1:]
        out += [tokens[i + ngram - 1] for i in range(len(tokens) - ngram + 1) if tokens[i:i + ngram - 1] == tail]
    return out


def greedy(lm, prefix, steps, stop, min_new=0, ngram=0):
    tokens = []
    for step in range(steps):
        logits = last_logits(lm, prefix, tokens).float().clone()
        logits[banned(tokens, step, min_new, ngram, stop)] = -math.inf
        nxt = int(logits.argmax())
        if nxt == stop:
            break
        tokens.append(nxt)
    return tokens


def beam(lm, prefix, k, steps, stop, length_penalty=1.0, min_new=0, ngram=0, temperature=1.0):
    """Textbook beam search keeping the k best finished hypotheses (pengi-kit's default)."""
    beams, finished = [(0.0, [])], []
    norm = lambda score, length: score / length ** length_penalty  # noqa: E731
    for step in range(steps):
        cands = []
        for score, toks in beams:
            logp = F.log_softmax(last_logits(lm, prefix, toks).float() / temperature, -1)
            logp[banned(toks, step, min_new, ngram, stop)] = -math.inf
            top = logp.topk(2 * k)  # the global 2k best lie within each beam's 2k best
            cands += [(score + v, toks, t) for v, t in zip(top.values.tolist(), top.indices.tolist())]
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, toks, tok) in enumerate(cands[: 2 * k]):
            if score == -math.inf:
                break
            if tok == stop:
                if rank < k:
                    finished.append((norm(score, step + 1), toks))
            elif len(beams) < k:
                beams.append((score, toks + [tok]))
        if len(finished) >= k:
            finished = sorted(finished, key=lambda h: -h[0])[:k]
            if finished[-1][0] >= (norm(beams[0][0], step + 1) if beams else -math.inf):
                break
    else:
        finished += [(norm(s, steps), t) for s, t in beams]
    return max(finished, key=lambda h: h[0])[1] if finished else []


def pengi_beam(lm, prefix, k, steps, stop, temperature=1.0):
    """The reference wrapper's beam search, beam by beam: ranks by summed log-probability
    over length after the first step; a stopped beam keeps its place and score and is
    extended by token 0 for free; stops when all beams have stopped."""
    def logp(tokens):
        return (last_logits(lm, prefix, tokens) / temperature).softmax(-1).log()

    first_logp = logp([])
    vocab = first_logp.shape[0]
    scores, first = first_logp.topk(k)
    beams = [{"score": s, "tokens": [int(t)], "length": 1.0, "stopped": int(t) == stop}
             for s, t in zip(scores, first)]
    for _ in range(1, steps):
        if all(b["stopped"] for b in beams):
            break
        averages, lengths = [], []
        for b in beams:
            if b["stopped"]:
                row = torch.full((vocab,), -math.inf, dtype=scores.dtype)
                row[0] = 0.0
            else:
                row = logp(b["tokens"])
            length = b["length"] + (0.0 if b["stopped"] else 1.0)
            averages.append((b["score"] + row) / length)
            lengths.append(length)
        top, idx = torch.cat(averages).topk(k)
        beams = [{"score": top[j] * lengths[int(idx[j]) // vocab],
                  "tokens": beams[int(idx[j]) // vocab]["tokens"] + [int(idx[j]) % vocab],
                  "length": lengths[int(idx[j]) // vocab],
                  "stopped": beams[int(idx[j]) // vocab]["stopped"] or int(idx[j]) % vocab == stop}
                 for j in range(k)]
    best = max(beams, key=lambda b: float(b["score"] / b["length"]))
    out = best["tokens"][: int(best["length"])]
    return out[:-1] if out[-1] == stop else out
