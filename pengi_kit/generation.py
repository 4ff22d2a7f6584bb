"""Decoding from an LM prefix over a KV cache: beam search, greedy and sampling.

All rows of a batch share the prefix length (2k), so batches need no left padding:
the prefix runs once, then one token per step goes through the cached LM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Decoding:
    """Decoding settings; the recipe's ``[generate]`` table holds the defaults."""

    method: str = "beam"
    beam_size: int = 5
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Decoding":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        cfg = cls(**values)
        if cfg.method not in ("beam", "greedy", "sample"):
            raise ValueError(f"decoding method {cfg.method!r}: use 'beam', 'greedy' or 'sample'")
        return cfg


def _constrain(logp: torch.Tensor, tokens: torch.Tensor, step: int, cfg: Decoding, eos: int) -> torch.Tensor:
    """Forbid end-of-text before ``min_new_tokens`` and repeated n-grams."""
    if step < cfg.min_new_tokens:
        logp[:, eos] = -math.inf
    n = cfg.no_repeat_ngram_size
    if n and tokens.shape[1] >= n:
        rows = tokens.tolist()
        for r, row in enumerate(rows):
            tail = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            banned = [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == tail]
            if banned:
                logp[r, banned] = -math.inf
    return logp


def _stopped(tokens: list[int], cfg: Decoding, tokenizer: Any) -> bool:
    if not cfg.stop:
        return False
    text = tokenizer.decode(tokens)
    return any(s in text for s in cfg.stop)


def cut_at_stop(text: str, stop: list[str]) -> str:
    for s in stop:
        text = text.split(s)[0] if s in text else text
    return text


@torch.no_grad()
def generate(lm: Any, prefix: torch.Tensor, cfg: Decoding) -> list[list[int]]:
    """Token ids (without end-of-text) for each row of ``prefix`` (B, P, D)."""
    if cfg.method == "beam" and cfg.beam_size > 1:
        return _beam_search(lm, prefix, cfg)
    return _greedy_or_sample(lm, prefix, cfg)


def _greedy_or_sample(lm: Any, prefix: torch.Tensor, cfg: Decoding) -> list[list[int]]:
    b, device, eos = prefix.shape[0], prefix.device, lm.eos_token_id
    generator = None
    if cfg.method == "sample":
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    mask = torch.ones(b, prefix.shape[1], dtype=torch.long, device=device)
    logits, past = lm(prefix, mask, use_cache=True)
    tokens = torch.empty(b, 0, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        logp = _constrain(F.log_softmax(logits[:, -1].float() / cfg.temperature, -1), tokens, step, cfg, eos)
        if cfg.method == "sample":
            nxt = torch.multinomial(_filter(logp, cfg).softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logp.argmax(-1)
        nxt = nxt.masked_fill(done, eos)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eos
        if cfg.stop:
            done |= torch.tensor([_stopped(r, cfg, lm.tokenizer) for r in tokens.tolist()], device=device)
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        logits, past = lm(lm.embed(nxt[:, None]), mask, past)
    return [_until_eos(row, eos) for row in tokens.tolist()]


def _filter(logp: torch.Tensor, cfg: Decoding) -> torch.Tensor:
    """Top-k, then nucleus (top-p) filtering of log-probabilities."""
    if cfg.top_k > 0:
        kth = logp.topk(min(cfg.top_k, logp.shape[-1]), -1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if cfg.top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)
        cumulative = sorted_logp.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logp.softmax(-1) > cfg.top_p  # keep the token that crosses top_p
        logp = logp.scatter(-1, order, sorted_logp.masked_fill(drop, -math.inf))
    return logp


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def _beam_search(lm: Any, prefix: torch.Tensor, cfg: Decoding) -> list[list[int]]:
    b, k, device, eos = prefix.shape[0], cfg.beam_size, prefix.device, lm.eos_token_id
    x = prefix.repeat_interleave(k, dim=0)
    mask = torch.ones(b * k, x.shape[1], dtype=torch.long, device=device)
    logits, past = lm(x, mask, use_cache=True)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -math.inf  # all beams start equal: expand only the first
    tokens = torch.empty(b * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b

    def normalised(score: float, length: int) -> float:
        return score / (length ** cfg.length_penalty)

    for step in range(cfg.max_new_tokens):
        logp = F.log_softmax(logits[:, -1].float() / cfg.temperature, -1)
        logp = _constrain(logp, tokens, step, cfg, eos)
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        rows = tokens.tolist()
        next_scores = torch.full((b, k), -math.inf, device=device)
        next_source = torch.zeros(b, k, dtype=torch.long, device=device)
        next_token = torch.full((b, k), eos, dtype=torch.long, device=device)
        for i in range(b):
            if done[i]:
                continue
            slot = 0
            for rank, (score, idx) in enumerate(zip(top_scores[i].tolist(), top_idx[i].tolist())):
                source, token = i * k + idx // vocab, idx % vocab
                if score == -math.inf:
                    break
                if token == eos or _stopped(rows[source] + [token], cfg, lm.tokenizer):
                    if rank < k:  # only candidates that would have been kept as beams
                        hyp = rows[source] + ([] if token == eos else [token])
                        finished[i].append((normalised(score, step + 1), hyp))
                    continue
                next_scores[i, slot], next_source[i, slot], next_token[i, slot] = score, source, token
                slot += 1
                if slot == k:
                    break
            if len(finished[i]) >= k:
                finished[i] = sorted(finished[i], key=lambda h: -h[0])[:k]
                best_running = normalised(next_scores[i, 0].item(), step + 1)
                done[i] = finished[i][-1][0] >= best_running
        if all(done):
            break
        scores = next_scores
        flat_source = next_source.view(-1)
        past = lm.reorder_cache(past, flat_source)
        tokens = torch.cat([tokens[flat_source], next_token.view(-1, 1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(b * k, 1)], dim=1)
        logits, past = lm(lm.embed(next_token.view(-1, 1)), mask, past)
    else:
        rows = tokens.tolist()
        for i in range(b):
            if not done[i]:
                for j in range(k):
                    if scores[i, j] > -math.inf:
                        finished[i].append((normalised(scores[i, j].item(), tokens.shape[1]), rows[i * k + j]))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
