"""Decoding from an LM prefix over a KV cache: beam search, greedy and sampling; and scoring
continuations of a prefix over its forked cache.

Rows may have prefixes of different lengths (a multiple-choice question, a clip whose audio
tokens follow its length, a conversation): :func:`pad_prefixes` pads them on the left with a
``prefix_mask``, and every position id comes from the mask (the number of real tokens before
it), never from the padded index, so a row gets the same tokens in any batch (GPT-2's absolute
positions and rotary LMs alike; ``pengi_kit.testing.check_batch_invariance``). Pengi's prefixes
(2k for every row) need no mask and no padding.

The prefix runs once per row (not once per beam), then one token per row and step goes
through the cached LM. The search itself is tensor code over the whole batch: no per-step
Python loop over rows or candidates, and no copy of the tokens to the host until the end,
unless ``stop`` strings need the text. Rows that are finished leave the batch, so the
remaining ones run on fewer rows.

With ``compile`` (on CUDA) the search runs over a static KV cache instead: rows fixed at
batch x beams and length at prefix + ``max_new_tokens``, finished rows left in place as
padding, so every one-token step has the same shapes and is captured once by
``torch.compile(mode="reduce-overhead")`` (CUDA graphs). The tokens are the same.

Two modes (``compat``):

- ``"none"`` (default): stops on the LM's real end-of-text; beam search keeps the
  ``beam_size`` best finished hypotheses, ranked by summed log-probability /
  length ** ``length_penalty``, and ends a clip once no running beam can beat them.
- ``"pengi"``: the decoding of Microsoft's reference ``PengiWrapper._generate_beam``,
  token for token: the stop id is the first token of ``' <|endoftext|>'`` (GPT-2:
  220, a bare space), probabilities are ``softmax(logits / temperature).log()``,
  beams are ranked by summed log-probability / length after the first step, a stopped
  beam stays in the beam with its score and is extended by token 0 at no cost, and
  the clip ends when every beam has stopped or after ``max_new_tokens`` (the
  reference's ``entry_length``, 67 unless given). The reference decodes one clip at
  a time; batching here gives the same tokens. Its text is :func:`reference_text` of
  the tokens, the stop id included (``generate(..., keep_stop=True)``).
"""
from __future__ import annotations

import inspect
import math
import sys
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from pengi_kit.decoding import Decoding  # the options, defined where the recipe and CLI read them without torch

PENGI_STOP_TOKEN = " <|endoftext|>"  # the reference encodes this and stops on its first id


def stop_token_id(lm: Any, cfg: Decoding) -> int:
    """The id that ends a row: end-of-text (in the chat layout, the template's end of an answer:
    ``lm.end_of_turn_id``), or with ``compat="pengi"`` the reference's first id of
    ``' <|endoftext|>'`` (GPT-2: 220, a bare space)."""
    if cfg.compat == "pengi":
        return int(lm.tokenizer.encode(PENGI_STOP_TOKEN)[0])
    end = getattr(lm, "end_of_turn_id", None)
    return int(lm.eos_token_id if end is None else end)


def cut_at_stop(text: str, stop: list[str]) -> str:
    for s in stop:
        text = text.split(s)[0] if s in text else text
    return text


# transformers 4.x cleaned decoded text by default (``clean_up_tokenization_spaces``; GPT-2's
# tokenizer config does not say otherwise) until that default was turned off; the Pengi wrapper
# pins 4.30 (msclap asks for ^4.34), so its text has the clean-up
_REFERENCE_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                      (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def reference_text(tokenizer: Any, ids: list[int]) -> str:
    """The string the reference wrappers return for ``ids`` (``tokenizer.decode(tokens[:length])``
    in Pengi's ``_generate_beam`` and msclap's): every token decoded, special ones
    (a literal ``<|endoftext|>``) and the stop id (GPT-2's 220, a trailing space) included,
    nothing stripped, and the clean-up of spaces before punctuation that the transformers
    they pin applied by default (`` .`` -> ``.``, `` 's`` -> ``'s`` ...), whatever the
    installed version does."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for old, new in _REFERENCE_CLEANUP:
        text = text.replace(old, new)
    return text


def pad_prefixes(prefixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of prefix embeddings (P_i, D) -> a left-padded batch (B, max P_i, D) and its mask
    (B, max P_i), 0 on the padding; the mask is None when every row has the same length."""
    width = max(len(p) for p in prefixes)
    if all(len(p) == width for p in prefixes):
        return torch.stack(prefixes), None
    first = prefixes[0]
    batch = first.new_zeros(len(prefixes), width, first.shape[-1])
    mask = torch.zeros(len(prefixes), width, dtype=torch.long, device=first.device)
    for i, p in enumerate(prefixes):
        batch[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return batch, mask


@torch.no_grad()
def generate(lm: Any, prefix: torch.Tensor, cfg: Decoding, *, prefix_mask: torch.Tensor | None = None,
             keep_stop: bool = False, static: bool | None = None) -> list[list[int]]:
    """Token ids for each row of ``prefix`` (B, P, D), without the stop id, or with
    ``keep_stop`` ending with it where the row stopped (the reference's text includes it;
    a row that a ``stop`` string ended may then end with a stop id it did not generate).

    ``prefix_mask`` (B, P): rows of different lengths, padded on the left (:func:`pad_prefixes`).
    ``static``: run over a static KV cache (see the module doc); unset, where ``cfg.compile``
    compiles the step. ``static=True`` without compile gives the same tokens (tested)."""
    if prefix.shape[0] == 0:
        return []
    compiled = cfg.compile and _can_compile(prefix.device)
    options = {"static": compiled if static is None else static or compiled, "compiled": compiled}
    if cfg.method == "beam" and cfg.compat == "pengi":
        search = _beam_search_pengi
    elif cfg.method == "beam" and cfg.beam_size > 1:
        search = _beam_search
    else:
        search = _greedy_or_sample
    return search(lm, _Prefix(prefix, prefix_mask), cfg, keep_stop, options)


# ---------------------------------------------------------------------- compiled decode step

# reduce-overhead: inductor kernels replayed as one CUDA graph per step; dynamic=False since
# the static cache gives every step the same shapes (a smaller last batch compiles once more)
COMPILE_OPTIONS: dict[str, Any] = {"mode": "reduce-overhead", "dynamic": False}
_noted: set[str] = set()
_compiled_step: Any = None


def _can_compile(device: torch.device) -> bool:
    """torch.compile of the decode step pays where CUDA graphs remove the per-kernel launch
    cost; on the CPU the step is bound by matrix products and compiling takes minutes, so
    ``compile`` is a no-op there, with a one-line note."""
    if device.type == "cuda":
        return True
    if device.type not in _noted:
        _noted.add(device.type)
        print(f"note: generate.compile captures the decode step on CUDA only; decoding on {device.type} "
              "as without it", file=sys.stderr)
    return False


def _lm_step(lm: Any, embeds: torch.Tensor, mask: torch.Tensor, past: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    return lm(embeds, mask, past, use_cache=True, **kwargs)


def _step() -> Any:
    """One compiled function for every LM (torch.compile guards on the module and shapes)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_lm_step, **COMPILE_OPTIONS)
    return _compiled_step


# ---------------------------------------------------------------------- helpers

def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Prefix:
    """A batch of prefixes (B, P, D) and, where rows differ in length, their left-padding mask."""

    def __init__(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.embeds, self.mask = embeds, mask
        self.rows, self.length, self.device = embeds.shape[0], embeds.shape[1], embeds.device


class _Runner:
    """Calls the LM on new embeddings with a growing mask (ones after each row's prefix), keeping
    the cache; rows selected from the cache take their mask rows with them.

    Where the LM offers them (optional extras of the causal-LM contract): only the last
    position's logits are computed (the prefix would otherwise compute a vocabulary-wide
    row per prefix token), the cache is preallocated (``new_cache``), and beam reorders
    leave the clip's shared prefix in place (``reorder_cache(..., keep_first=)``).

    With ``static`` (and an LM whose ``new_cache`` takes ``rows``), the cache and mask keep
    ``rows`` x ``total`` for the whole search: fewer live rows are padded, the mask is zero
    where nothing was written yet, and each one-token step has the same shapes, which
    ``compiled`` runs through ``torch.compile``.
    """

    def __init__(self, lm: Any, rows: int, total: int, prefix: _Prefix,
                 options: dict[str, bool] | None = None) -> None:
        options = options or {}
        self.lm, self.rows, self.length = lm, rows, 0
        self.static = bool(options.get("static")) and _accepts(getattr(lm, "new_cache", None), "rows")
        self.step = _step() if self.static and options.get("compiled") else None
        self.mask = torch.ones(rows, total, dtype=torch.long, device=prefix.device)
        if self.static:
            self.mask.zero_()
            self.past: Any = lm.new_cache(total, rows=rows)
        else:
            self.past = lm.new_cache(total) if hasattr(lm, "new_cache") else None
        self.ragged = prefix.mask  # the prefix's padding, written into the mask as the prefix runs
        self.last_only = {"logits_to_keep": 1} if _accepts(lm.forward, "logits_to_keep") else {}
        self.keep_prefix = _accepts(lm.reorder_cache, "keep_first")

    def __call__(self, embeds: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """The logits after the last of ``embeds`` (rows, vocab), or with ``every_position``
        after each of them (rows, new, vocab; not with a static cache)."""
        rows, new = embeds.shape[:2]
        if not self.static:
            if self.ragged is not None and self.length == 0:
                self.mask[:rows, :new] = self.ragged
            self.length += new
            logits, self.past = self.lm(embeds, self.mask[:rows, : self.length], self.past, use_cache=True,
                                        **({} if every_position else self.last_only))
            return logits if every_position else logits[:, -1]
        self.mask[:, self.length: self.length + new] = 1
        if self.ragged is not None and self.length == 0:
            self.mask[:rows, :new] = self.ragged
        self.length += new
        if new > 1:  # the prefix, once per search: not worth a static shape
            logits, self.past = self.lm(embeds, self.mask[:rows], self.past, use_cache=True, **self.last_only)
            return logits[:, -1]
        if rows < self.rows:  # finished rows left the search: pad, so the step keeps its shape
            embeds = torch.cat([embeds, embeds.new_zeros(self.rows - rows, *embeds.shape[1:])])
        if self.step is None:
            logits, self.past = self.lm(embeds, self.mask, self.past, use_cache=True, **self.last_only)
            return logits[:rows, -1]
        torch.compiler.cudagraph_mark_step_begin()
        logits, self.past = self.step(self.lm, embeds, self.mask, self.past, **self.last_only)
        return logits[:rows, -1].clone()  # the graph's output buffer is overwritten by the next step

    def select(self, rows: torch.Tensor, keep_first: int = 0) -> None:
        """Keep (and reorder, or repeat) cache rows. ``keep_first``: the positions before it
        are equal in each row and its source, e.g. the prefix shared by a clip's beams."""
        if keep_first and self.keep_prefix:
            self.past = self.lm.reorder_cache(self.past, rows, keep_first=keep_first)
        else:
            self.past = self.lm.reorder_cache(self.past, rows)
        if self.ragged is not None:  # rows differ in their padding: the mask rows follow the cache's
            mask = self.mask[rows]
            self.mask[: len(rows)] = mask
            self.mask[len(rows):] = mask[:1]  # static: padding rows copy row 0, as the cache does


def _ban(logp: torch.Tensor, tokens: torch.Tensor, step: int, cfg: Decoding, stop: int) -> torch.Tensor:
    """Forbid the stop id before ``min_new_tokens`` and repeated n-grams, in place.

    ``tokens`` (R, step) are each row's tokens so far. The n-gram ban is tensor code:
    every window whose first n-1 tokens equal the row's last n-1 bans its last token.
    """
    if step < cfg.min_new_tokens:
        logp[:, stop] = -math.inf
    n = cfg.no_repeat_ngram_size
    if n and step >= n:
        windows = tokens.unfold(1, n, 1)  # (R, step - n + 1, n)
        tail = tokens[:, step - n + 1:]
        match = (windows[:, :, :-1] == tail[:, None, :]).all(-1)
        penalty = torch.zeros(match.shape, dtype=logp.dtype, device=logp.device).masked_fill_(match, -math.inf)
        logp.scatter_add_(1, windows[:, :, -1], penalty)
    return logp


def _filter(logp: torch.Tensor, cfg: Decoding) -> torch.Tensor:
    """Top-k, then nucleus (top-p) filtering of log-probabilities."""
    if cfg.top_k > 0:
        kth = logp.topk(min(cfg.top_k, logp.shape[-1]), -1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if cfg.top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)
        probs = sorted_logp.softmax(-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the token that crosses top_p
        logp = logp.scatter(-1, order, sorted_logp.masked_fill(drop, -math.inf))
    return logp


_MIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)  # splitmix64's constants, as int64


def _gumbel(seed: torch.Tensor, step: int, vocab: int, rows: int) -> torch.Tensor:
    """Gumbel noise (rows, vocab) for sampling at ``step``: argmax(log p + noise) draws from p.
    The noise is a hash (splitmix64) of (seed, step, token), not a draw from a generator shared
    by the batch, so a row samples the same tokens alone or in any batch, on any device."""
    x = seed.view(-1, 1) * _MIX[0] + step * vocab + torch.arange(vocab, device=seed.device)
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX[1]  # logical shifts: int64 >> keeps the sign
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX[2]
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    uniform = (((x >> 11) & ((1 << 53) - 1)).double() + 0.5) / 2.0 ** 53  # in (0, 1)
    return (-torch.log(-torch.log(uniform))).float().expand(rows, vocab)


def _next_tokens(logits: torch.Tensor, cfg: Decoding, step: int, history: torch.Tensor, stop: int,
                 seed: torch.Tensor) -> torch.Tensor:
    """Greedy or sampled next tokens (rows,) of rows at ``step`` with ``history`` (rows, step) so
    far; ``seed``: sampling's, one for all rows or one per row."""
    if cfg.method == "sample":
        logp = _ban(F.log_softmax(logits.float() / cfg.temperature, -1), history, step, cfg, stop)
        return (_filter(logp, cfg) + _gumbel(seed, step, logp.shape[-1], len(logp))).argmax(-1)
    if cfg.min_new_tokens or cfg.no_repeat_ngram_size:
        return _ban(logits.float().clone(), history, step, cfg, stop).argmax(-1)
    return logits.argmax(-1)


def _hits_stop_string(lm: Any, rows: list[list[int]], cfg: Decoding) -> list[bool]:
    decode = lm.tokenizer.decode
    return [any(s in decode(row) for s in cfg.stop) for row in rows]


def _until(row: list[int], stop: int, keep: bool = False) -> list[int]:
    return row[: row.index(stop) + int(keep)] if stop in row else row


# ---------------------------------------------------------------------- scoring

@torch.no_grad()
def score(lm: Any, prefix: torch.Tensor, continuations: list[list[list[int]]], *,
          prefix_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Summed log-probabilities (float64) of token sequences after each row's prefix: for row i,
    a tensor with one value per sequence of ``continuations[i]``.

    Each prefix runs once; its KV cache is then forked, one copy per continuation, and all the
    continuations of the batch run together over the forked caches (the choices of a
    multiple-choice item, the class names of a zero-shot classifier, several answers to one
    clip). ``prefix_mask``: rows of different lengths, as :func:`generate` takes them."""
    pre = _Prefix(prefix, prefix_mask)
    owner = [i for i, seqs in enumerate(continuations) for _ in seqs]
    flat = [list(seq) for seqs in continuations for seq in seqs]
    if not flat:
        return [torch.zeros(0, dtype=torch.float64) for _ in continuations]
    if any(not seq for seq in flat):
        raise ValueError("a continuation to score is empty: give each at least one token")
    width = max(len(seq) for seq in flat)
    ids = torch.zeros(len(flat), width, dtype=torch.long, device=pre.device)
    real = torch.zeros(len(flat), width, dtype=torch.bool, device=pre.device)
    for n, seq in enumerate(flat):
        ids[n, : len(seq)] = torch.tensor(seq, device=pre.device)
        real[n, : len(seq)] = True
    run = _Runner(lm, len(flat), pre.length + width, pre)
    first = F.log_softmax(run(pre.embeds).float(), -1)  # the next-token distribution after each prefix
    rows = torch.tensor(owner, device=pre.device)
    logp = first[rows].gather(1, ids[:, :1])  # (N, 1)
    if width > 1:
        run.select(rows)  # the fork: each continuation gets its row's cache
        # padding after a continuation's last token is never attended by its real tokens (causal)
        after = F.log_softmax(run(lm.embed(ids[:, :-1]), every_position=True).float(), -1)
        logp = torch.cat([logp, after.gather(2, ids[:, 1:, None]).squeeze(2)], 1)
    sums = logp.masked_fill(~real, 0.0).double().sum(1).cpu()
    out, at = [], 0
    for seqs in continuations:
        out.append(sums[at: at + len(seqs)])
        at += len(seqs)
    return out


# ---------------------------------------------------------------------- greedy / sampling

def _greedy_or_sample(lm: Any, prefix: _Prefix, cfg: Decoding, keep_stop: bool = False,
                      options: dict[str, bool] | None = None) -> list[list[int]]:
    b, p, device = prefix.rows, prefix.length, prefix.device
    stop, steps = stop_token_id(lm, cfg), cfg.max_tokens
    seed = torch.tensor(cfg.seed if cfg.seed is not None else int(torch.seed()) % 2**62, device=device)
    run = _Runner(lm, b, p + steps, prefix, options)
    logits = run(prefix.embeds)
    tokens = torch.full((b, steps), stop, dtype=torch.long, device=device)
    out = torch.full((b, steps), stop, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)  # original row of each batch row
    for step in range(steps):
        nxt = _next_tokens(logits, cfg, step, tokens[:, :step], stop, seed)
        tokens[:, step] = nxt
        ended = nxt == stop
        if cfg.stop:
            ended |= torch.tensor(_hits_stop_string(lm, tokens[:, : step + 1].tolist(), cfg), device=device)
        if step == steps - 1:
            break
        n_ended = int(ended.sum())  # the one host sync per step
        if n_ended:
            out[alive[ended]] = tokens[ended]
            if n_ended == len(alive):
                alive, tokens = alive[:0], tokens[:0]
                break
            keep = (~ended).nonzero().squeeze(1)
            alive, tokens, nxt = alive[keep], tokens[keep], nxt[keep]
            run.select(keep)
        logits = run(lm.embed(nxt[:, None]))
    out[alive] = tokens
    return [_until(row, stop, keep_stop) for row in out.tolist()]


# ---------------------------------------------------------------------- beam search

class _Beams:
    """Beam search (``compat="none"``) over n clips of k beams: the running beams' scores and
    tokens and the k best finished hypotheses of each clip (see the module doc). :func:`generate`
    runs all its clips through one; a :class:`Stream` gives each beam request its own."""

    def __init__(self, n: int, cfg: Decoding, stop: int, device: torch.device) -> None:
        k, steps = cfg.beam_size, cfg.max_tokens
        self.cfg, self.stop, self.k, self.steps, self.step_index = cfg, stop, k, steps, 0
        self.scores = torch.zeros(n, k, device=device)
        self.scores[:, 1:] = -math.inf  # all beams start equal: expand only the first
        self.tokens = torch.full((n * k, steps), stop, dtype=torch.long, device=device)
        self.fin_scores = torch.full((n, k), -math.inf, device=device)
        self.fin_tokens = torch.full((n, k, steps), stop, dtype=torch.long, device=device)
        self.ranks = torch.arange(2 * k, device=device)

    def step(self, lm: Any, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step from the running beams' logits (n * k, vocab): the source row of each next
        beam (n * k; rows as numbered now), its token (n * k), and which clips are done (n).

        The 2k best candidates of a clip are ranked; an ending one (stop id, or a ``stop`` string
        completed) among the first k becomes a finished hypothesis, and the first k that do not
        end become the next beams. At the last step the running beams compete with the finished ones."""
        cfg, stop, k, steps, step, ranks = self.cfg, self.stop, self.k, self.steps, self.step_index, self.ranks
        lp, n, device = cfg.length_penalty, len(self.scores), logits.device
        logp = _ban(F.log_softmax(logits.float() / cfg.temperature, -1), self.tokens[:, :step], step, cfg, stop)
        vocab = logp.shape[-1]
        cand = (self.scores.view(-1, 1) + logp).view(n, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
        width = top_scores.shape[1]
        row = top_idx // vocab + torch.arange(n, device=device)[:, None] * k  # (n, 2k) source rows
        token = top_idx % vocab
        finite = top_scores > -math.inf
        ends = token == stop
        if cfg.stop:
            rows = self.tokens[:, :step].tolist()
            cands = [rows[r] + [t] for r, t in zip(row.view(-1).tolist(), token.view(-1).tolist())]
            ends |= torch.tensor(_hits_stop_string(lm, cands, cfg), device=device).view(n, width)
        # finished hypotheses: ending candidates among the first k, merged into the k best
        finishing = (ends & finite & (ranks[:width] < k))[:, :k]
        hyp = self.tokens[row[:, :k].reshape(-1)].view(n, k, steps)
        hyp[:, :, step] = token[:, :k]  # a stop string's last token stays; the stop id is cut later
        new = torch.where(finishing, top_scores[:, :k] / ((step + 1) ** lp), -math.inf)
        self.fin_scores, order = torch.cat([self.fin_scores, new], 1).topk(k, dim=1)
        self.fin_tokens = torch.cat([self.fin_tokens, hyp], 1).gather(1, order[:, :, None].expand(-1, -1, steps))
        # next beams: the first k candidates that do not end, in rank order
        keep = finite & ~ends
        pick = torch.where(keep, ranks[:width], ranks[:width] + width).argsort(dim=1)[:, :k]
        picked = keep.gather(1, pick)
        self.scores = torch.where(picked, top_scores.gather(1, pick), -math.inf)
        next_row = row.gather(1, pick).view(-1)
        next_token = torch.where(picked, token.gather(1, pick), stop).view(-1)
        worst = self.fin_scores[:, -1]
        done = (worst > -math.inf) & (worst >= self.scores[:, 0] / ((step + 1) ** lp))
        self.tokens = self.tokens[next_row]
        self.tokens[:, step] = next_token
        self.step_index += 1
        if self.step_index == steps:  # running beams compete with the finished ones at full length
            running = torch.where(done[:, None], -math.inf, self.scores / (steps ** lp))
            self.fin_scores = torch.cat([self.fin_scores, running], 1)
            self.fin_tokens = torch.cat([self.fin_tokens, self.tokens.view(n, k, steps)], 1)
            done = torch.ones_like(done)
        return next_row, next_token, done

    def best(self, clips: torch.Tensor) -> torch.Tensor:
        """The best finished hypothesis (len(clips), steps) of each of ``clips`` (a mask or indices)."""
        fin_scores, fin_tokens = self.fin_scores[clips], self.fin_tokens[clips]
        return fin_tokens[torch.arange(len(fin_tokens), device=fin_tokens.device), fin_scores.argmax(1)]

    def keep(self, clips: torch.Tensor) -> None:
        """Go on with ``clips`` (indices) only."""
        self.scores, self.fin_scores, self.fin_tokens = self.scores[clips], self.fin_scores[clips], self.fin_tokens[clips]
        self.tokens = self.tokens.view(-1, self.k, self.steps)[clips].view(-1, self.steps)


def _beam_search(lm: Any, prefix: _Prefix, cfg: Decoding, keep_stop: bool = False,
                 options: dict[str, bool] | None = None) -> list[list[int]]:
    """Beam search that keeps the k best finished hypotheses per clip (:class:`_Beams`)."""
    b, p, device = prefix.rows, prefix.length, prefix.device
    k, stop = cfg.beam_size, stop_token_id(lm, cfg)
    run = _Runner(lm, b * k, p + cfg.max_tokens, prefix, options)
    logits = run(prefix.embeds)
    run.select(torch.arange(b, device=device).repeat_interleave(k))  # one prefix pass per clip
    logits = logits.repeat_interleave(k, dim=0)
    beams = _Beams(b, cfg, stop, device)
    out = torch.full((b, cfg.max_tokens), stop, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)
    while True:
        rows, tokens, done = beams.step(lm, logits)
        n_done = int(done.sum())  # the one host sync per step
        if n_done:
            out[alive[done]] = beams.best(done)
            if n_done == len(alive):
                break
            kept = (~done).nonzero().squeeze(1)
            alive = alive[kept]
            beams.keep(kept)
            rows, tokens = rows.view(-1, k)[kept].view(-1), tokens.view(-1, k)[kept].view(-1)
        run.select(rows, keep_first=0 if n_done else p)  # beams of a clip share its prefix
        logits = run(lm.embed(tokens[:, None]))
    return [_until(r, stop, keep_stop) for r in out.tolist()]


def _beam_search_pengi(lm: Any, prefix: _Prefix, cfg: Decoding, keep_stop: bool = False,
                       options: dict[str, bool] | None = None) -> list[list[int]]:
    """The reference wrapper's beam search, batched over clips (see the module doc)."""
    b, p, device = prefix.rows, prefix.length, prefix.device
    k, steps, stop = cfg.beam_size, cfg.max_tokens, stop_token_id(lm, cfg)
    temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    run = _Runner(lm, b * k, p + steps, prefix, options)
    logp = (run(prefix.embeds) / temperature).softmax(-1).log()
    vocab = logp.shape[-1]
    scores, first = logp.topk(k, -1)  # (b, k): the first step ranks by log-probability alone
    run.select(torch.arange(b, device=device).repeat_interleave(k))
    lengths = torch.ones(b, k, device=device)
    stopped = first == stop
    tokens = torch.zeros(b * k, steps, dtype=torch.long, device=device)  # a stopped beam gets 0s
    tokens[:, 0] = first.view(-1)
    out_tokens = torch.zeros(b, steps, dtype=torch.long, device=device)
    out_lengths = torch.zeros(b, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)
    nxt = first

    def finish(clips: torch.Tensor) -> None:
        best = (scores[clips] / lengths[clips]).argsort(dim=1, descending=True)[:, 0]
        out_tokens[alive[clips]] = tokens.view(len(alive), k, steps)[clips, best]
        out_lengths[alive[clips]] = lengths[clips, best].long()

    for step in range(1, steps + 1):
        done = stopped.all(1)
        if step == steps:
            finish(torch.arange(len(alive), device=device))
            break
        n_done = int(done.sum())  # the one host sync per step
        if n_done:
            finish(done.nonzero().squeeze(1))
            if n_done == len(alive):
                break
            keep = (~done).nonzero().squeeze(1)
            rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            alive, scores, lengths, stopped, nxt = alive[keep], scores[keep], lengths[keep], stopped[keep], nxt[keep]
            tokens = tokens[rows]
            run.select(rows)
        n = len(alive)
        logp = (run(lm.embed(nxt.reshape(-1, 1))) / temperature).softmax(-1).log().view(n, k, vocab)
        logp.masked_fill_(stopped[:, :, None], -math.inf)
        logp[:, :, 0].masked_fill_(stopped, 0.0)  # a stopped beam goes on with token 0 at no cost
        summed = scores[:, :, None] + logp
        lengths = lengths + (~stopped).float()
        average, idx = (summed / lengths[:, :, None]).view(n, -1).topk(k, -1)
        source, nxt = idx // vocab, idx % vocab
        lengths = lengths.gather(1, source)
        scores = average * lengths
        stopped = stopped.gather(1, source) | (nxt == stop)
        rows = (source + torch.arange(n, device=device)[:, None] * k).view(-1)
        tokens = tokens[rows]
        tokens[:, step] = nxt.view(-1)
        run.select(rows, keep_first=p)  # beams of a clip share its prefix
    result = []
    for row, length in zip(out_tokens.tolist(), out_lengths.tolist()):
        row = row[:length]  # the reference's text is tokens[:length], its stop id included
        result.append(row[:-1] if row and row[-1] == stop and not keep_stop else row)
    return result


# ---------------------------------------------------------------------- rows that join and leave

class _Request:
    """A row of a :class:`Stream`: its prefix and options, its slots in the cache (one, or one per
    beam), and what it has generated."""

    def __init__(self, key: Any, prefix: torch.Tensor, cfg: Decoding, stop: int) -> None:
        self.key, self.prefix, self.cfg, self.stop = key, prefix, cfg, stop
        self.beam = cfg.method == "beam" and cfg.beam_size > 1
        self.width = cfg.beam_size if self.beam else 1
        seed = cfg.seed if cfg.seed is not None else int(torch.seed()) % 2**62
        self.seed = torch.tensor(seed, device=prefix.device)
        self.group = repr(replace(cfg, seed=None))  # rows of equal options choose their tokens together
        self.slots: list[int] = []
        self.tokens: list[int] = []
        self.beams: _Beams | None = None


class Stream:
    """A decode that rows join and leave at step boundaries: continuous batching, as a server
    that takes requests while it answers others needs.

    :meth:`add` queues a row (its prefix and its own :class:`Decoding`: greedy and sampling per
    row, beam search per group of ``beam_size`` rows; not ``compat="pengi"``); each :meth:`step`
    admits the queued rows that fit (their prefixes run together once, padded, and are copied
    into free slots of the LM's :class:`~pengi_kit.components.hf_causal_lm.SlotCache`; rows
    given the same prefix tensor share one prefill), chooses one token for every live row and
    returns the rows that ended, with their tokens. A finished (or :meth:`cancel`-led) row's
    slot goes to the last live row, so the live rows stay first; no step copies the whole
    cache. A row gets the tokens :func:`generate` gives it (tested by
    ``pengi_kit.testing.check_batch_invariance`` with rows joining at random steps).

    >>> stream = Stream(lm, rows=32, length=1024)                      # doctest: +SKIP
    >>> stream.add("a", prefix_a, Decoding(method="greedy"))            # doctest: +SKIP
    >>> results = {}                                                     # doctest: +SKIP
    >>> while stream.busy:                                               # doctest: +SKIP
    ...     results.update(stream.step())
    """

    def __init__(self, lm: Any, rows: int = 32, length: int = 1024, keep_stop: bool = False) -> None:
        if not _accepts(getattr(lm, "new_cache", None), "slots"):
            raise TypeError(f"{type(lm).__name__} offers no slot cache (new_cache(..., slots=True)), which rows that "
                            "join and leave need")
        self.lm, self.rows, self.length, self.keep_stop = lm, rows, length, keep_stop
        self.device = next(lm.parameters()).device
        self.cache = lm.new_cache(length, rows=rows, slots=True)
        self.waiting: list[_Request] = []
        self.owners: list[_Request] = []  # the request of each live slot
        self.lengths: list[int] = []  # how far each live slot is filled
        self.logits: torch.Tensor | None = None  # each live slot's next-token logits
        self.cancelled: set[Any] = set()  # live rows to drop at the next step
        self.stepped = 0  # rows that chose a token at the last step

    @property
    def busy(self) -> bool:
        """Rows wait or run."""
        return bool(self.waiting or self.owners)

    def live(self) -> dict[Any, list[int]]:
        """The tokens each running row has chosen so far (a beam search's are known when it ends: [])."""
        return {r.key: list(r.tokens) for r in dict.fromkeys(self.owners)}

    def cancel(self, key: Any) -> None:
        """Drop row ``key``: a waiting row never joins, a running one frees its slots at the next step."""
        self.waiting = [r for r in self.waiting if r.key != key]
        if any(r.key == key for r in self.owners):
            self.cancelled.add(key)

    def add(self, key: Any, prefix: torch.Tensor, cfg: Decoding) -> None:
        """Queue a row: ``prefix`` (P, D) on the LM's device, decoded with ``cfg``; it joins at the
        next step that has room for it, and :meth:`step` returns ``(key, tokens)`` when it ends."""
        if cfg.method == "beam" and cfg.compat == "pengi":
            raise ValueError("compat='pengi' decodes as the reference does, one batch at a time: use generate()")
        request = _Request(key, prefix, cfg, stop_token_id(self.lm, cfg))
        if len(prefix) + cfg.max_tokens > self.length or request.width > self.rows:
            raise ValueError(f"row {key!r} needs {len(prefix) + cfg.max_tokens} positions and {request.width} slot(s); "
                             f"this stream has {self.length} and {self.rows}")
        self.waiting.append(request)

    def _admit(self) -> None:
        joining: list[_Request] = []
        free = self.rows - len(self.owners)
        while self.waiting and self.waiting[0].width <= free:
            joining.append(self.waiting.pop(0))
            free -= joining[-1].width
        if not joining:
            return
        distinct = list({id(r.prefix): r.prefix for r in joining}.values())  # a shared prefix runs once
        run_row = {id(p): i for i, p in enumerate(distinct)}
        prefix = _Prefix(*pad_prefixes(distinct))
        run = _Runner(self.lm, prefix.rows, prefix.length, prefix)
        logits = run(prefix.embeds)
        rows, slots, lengths = [], [], []
        for request in joining:
            request.slots = list(range(len(self.owners), len(self.owners) + request.width))
            if request.beam:
                request.beams = _Beams(1, request.cfg, request.stop, self.device)
            rows += [run_row[id(request.prefix)]] * request.width
            slots += request.slots
            lengths += [len(request.prefix)] * request.width
            self.owners += [request] * request.width
            self.lengths += [len(request.prefix)] * request.width
        self.cache.admit(run.past, rows, slots, lengths)
        new = logits[torch.tensor(rows, device=self.device)]
        self.logits = new if self.logits is None else torch.cat([self.logits[: len(self.owners) - len(rows)], new])

    def step(self) -> list[tuple[Any, list[int]]]:
        """Admit the queued rows that fit, choose one token for every live row, run the LM on
        them, and return ``(key, tokens)`` of the rows that ended (without the stop id, unless
        ``keep_stop``)."""
        self._admit()
        if not self.owners:
            return []
        n = self.stepped = len(self.owners)
        inputs = torch.empty(n, dtype=torch.long, device=self.device)
        requests = list(dict.fromkeys(self.owners))
        cancelled = [r for r in requests if r.key in self.cancelled]
        self.cancelled.clear()
        ended = list(cancelled)
        groups: dict[tuple[int, int], list[_Request]] = {}
        for r in requests:
            if r in cancelled:
                continue
            if r.beam:
                self._beam_step(r, inputs, ended)
            else:
                groups.setdefault((r.group, len(r.tokens)), []).append(r)
        for (_, step), group in groups.items():
            cfg, slots = group[0].cfg, [r.slots[0] for r in group]
            history = torch.tensor([r.tokens for r in group], dtype=torch.long, device=self.device).view(len(group), step)
            chosen = _next_tokens(self.logits[slots], cfg, step, history, group[0].stop,
                                  torch.stack([r.seed for r in group]))
            for r, token in zip(group, chosen.tolist()):
                r.tokens.append(token)
                end = token == r.stop or len(r.tokens) == cfg.max_tokens
                if cfg.stop and not end:
                    end = _hits_stop_string(self.lm, [r.tokens], cfg)[0]
                if end:
                    ended.append(r)
            inputs[slots] = chosen
        out = []
        for r in ended[len(cancelled):]:
            tokens = (_until(r.beams.best(torch.zeros(1, dtype=torch.long, device=self.device))[0].tolist(), r.stop,
                             self.keep_stop) if r.beam else _until(r.tokens, r.stop, self.keep_stop))
            out.append((r.key, tokens))
        self._leave(ended, inputs)
        if self.owners:
            self._forward(inputs[: len(self.owners)])
        else:
            self.logits = None
        return out

    def _beam_step(self, r: _Request, inputs: torch.Tensor, ended: list[_Request]) -> None:
        slots = torch.tensor(r.slots, device=self.device)
        rows, tokens, done = r.beams.step(self.lm, self.logits[slots])
        if bool(done[0]):
            ended.append(r)
            return
        # beams move: each slot takes its source beam's positions after the shared prefix
        self.cache.copy(slots[rows], slots, start=len(r.prefix), end=self.lengths[r.slots[0]])
        inputs[slots] = tokens

    def _leave(self, ended: list[_Request], inputs: torch.Tensor) -> None:
        """Free the ended rows' slots; the last live slots move into them."""
        free = sorted(slot for r in ended for slot in r.slots)
        if not free:
            return
        live = len(self.owners) - len(free)
        holes = [slot for slot in free if slot < live]
        movers = [slot for slot in range(live, len(self.owners)) if slot not in set(free)]
        if holes:
            src, dst = (torch.tensor(x, device=self.device) for x in (movers, holes))
            self.cache.copy(src, dst, 0, max(self.lengths[m] for m in movers))
            inputs[dst] = inputs[src]
            for m, h in zip(movers, holes):
                owner = self.owners[m]
                owner.slots[owner.slots.index(m)] = h
                self.owners[h], self.lengths[h] = owner, self.lengths[m]
        del self.owners[live:], self.lengths[live:]

    def _forward(self, tokens: torch.Tensor) -> None:
        columns = torch.tensor(self.lengths, device=self.device)
        width = max(self.lengths) + 1
        mask = (torch.arange(width, device=self.device)[None, :] <= columns[:, None]).long()
        self.cache.set_step(columns, width)
        logits, _ = self.lm(self.lm.embed(tokens[:, None]), mask, self.cache, position_ids=columns[:, None],
                            use_cache=True, **({"logits_to_keep": 1} if _accepts(self.lm.forward, "logits_to_keep")
                                               else {}))
        self.logits = logits[:, -1]
        self.lengths = [n + 1 for n in self.lengths]
