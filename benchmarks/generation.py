"""Generation speed, two comparisons on models with random weights built offline.

``--lm gpt2`` (default): pengi-kit's batched KV-cached decoding against the reference
wrapper's way (one clip at a time, the whole sequence re-run through GPT-2 at every
step, logits for every position), on a model of Pengi-base shape: HTSAT-tiny (7 s at
44.1 kHz), CLIP ViT-B/16 text tower shape, two 4-layer transformer mappers with k = 40,
GPT-2 base shape with GPT-2's 50257-token vocabulary (a word-level stand-in tokenizer of
that size, since GPT-2's own is not available offline). Both sides run in this process
from waveforms in memory to text, with beam 5 and 30 new tokens in ``compat="pengi"``
mode, so they must return the same tokens; this is checked on the clips the reference
decodes. Random weights rarely emit the stop token, so every clip runs the full 30 steps.
Ours decodes max(--clips, batch) clips at each batch size.

``--lm smollm2-135m``: a Llama-type LM of SmolLM2-135M shape (hidden 576, 30 layers, 9
heads, 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings, rope theta 100000),
decoding from the same random prefix of Pengi's 2 x 40 embeddings with
``pengi_kit.generation.generate`` (``compat="none"``) and with what a user would otherwise
call, transformers' ``model.generate(inputs_embeds=prefix, num_beams=5, ...)``, set to the
same search (length_penalty 1, early_stopping False, the same end-of-text and pad ids).
The tokens must be identical. Random weights never emit end-of-text here, so every row
runs all ``--max-new-tokens`` steps and the stopping rules are not exercised. The weights
are drawn with std ``--init-std`` (0.2) instead of SmolLM2's 0.02: at 0.02, tied embeddings
make each row repeat one token, which any search finds; timing does not depend on it. Also
printed: prefix + first token, and the time per further token, for each side. ``--layers``
and ``--vocab`` below SmolLM2's are for smoke runs only.

``--lm smollm2-135m --ragged``: the same LM on a batch of 8 prefixes whose lengths vary 2x
(``--prefix-length`` / 2 to ``--prefix-length``, padded on the left with a mask): beam 5 against
the equal-length batch of the longest, and against transformers' ``generate`` on the same
padded batch and mask (``compat="none"``, the same search); and scoring 4 one- to three-token
candidates per row over each prefix's forked cache (``pengi_kit.generation.score``) against
one greedy generation of a one-word answer (2 new tokens).

    python benchmarks/generation.py [--lm gpt2|smollm2-135m] [--ragged] [--device cpu|cuda] [--batches 1,8,32]
                                    [--beam-size 5] [--max-new-tokens 30] [--threads N]
                                    [--ref-clips 2] [--clips 8]                    # --lm gpt2
                                    [--layers 30] [--vocab 49152] [--repeats 1]    # --lm smollm2-135m

Prints clips/s (gpt2) or seconds (smollm2-135m) and the ratio for each batch size.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

RATE, SECONDS, PROMPT = 44100, 7.0, "generate audio caption"


def build_model(device: str, lm_layers: int = 12, vocab: int = 50257):
    """Pengi-base shape; a smaller LM and vocabulary only for ``benchmarks/gpu.sh --smoke``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pengi_kit.data.tokenizer import word_tokenizer
    from pengi_kit.components.hf_causal_lm import HFCausalLM
    from pengi_kit.model import build_model as build
    from pengi_kit.recipe import load_recipe

    recipe = load_recipe("pengi_base", ['model.text_encoder.pretrained=""', 'model.lm.pretrained=""',
                                        "model.lm.n_layer=1"])  # this LM is replaced below
    torch.manual_seed(0)
    model = build(recipe)
    tokenizer = word_tokenizer([f"w{i}" for i in range(vocab - 4)])  # GPT-2's vocabulary size
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=lm_layers, bos_token_id=0, eos_token_id=0)  # GPT-2 base
    model.lm = HFCausalLM(GPT2LMHeadModel(config), tokenizer)
    model.recipe = {**recipe, "generate": {}}
    return model.to(device).eval()


@torch.inference_mode()
def reference_generate(pengi, clip, beam_size: int, steps: int) -> list[int]:
    """One clip the reference wrapper's way: its prefix (audio embedding normalised, prompt
    embedding not), then its beam search with no KV cache: GPT-2 re-runs the prefix and
    every token so far, for every beam, at every step, computing logits at every position."""
    model = pengi.model
    tokens = model.tokenize_prompts([PROMPT])
    embed = model.prefix(pengi._batch([clip], None), tokens["input_ids"].to(pengi.device),
                         tokens["attention_mask"].to(pengi.device), compat="pengi")
    gpt, stop = model.lm.model, model.lm.tokenizer.encode(" <|endoftext|>")[0]
    logp = gpt(inputs_embeds=embed).logits[:, -1].softmax(-1).log()
    scores, out = logp.topk(beam_size, -1)  # (1, k): first tokens, ranked by log-probability
    scores, out = scores[0], out.view(beam_size, 1)
    lengths = torch.ones(beam_size, device=embed.device)
    stopped = out[:, 0] == stop
    seq = torch.cat([embed.expand(beam_size, -1, -1), gpt.transformer.wte(out)], 1)
    for _ in range(1, steps):
        if bool(stopped.all()):
            break
        logp = gpt(inputs_embeds=seq).logits[:, -1].softmax(-1).log()
        logp[stopped] = -math.inf
        logp[stopped, 0] = 0.0
        summed = scores[:, None] + logp
        lengths = lengths + (~stopped).float()
        average, flat = (summed / lengths[:, None]).view(-1).topk(beam_size)
        source, token = flat // logp.shape[1], flat % logp.shape[1]
        lengths, stopped = lengths[source], stopped[source] | (token == stop)
        scores = average * lengths
        out = torch.cat([out[source], token[:, None]], 1)
        seq = torch.cat([seq[source], gpt.transformer.wte(token)[:, None]], 1)
    best = int((scores / lengths).argsort(descending=True)[0])
    row = out[best, : int(lengths[best])].tolist()
    return row[:-1] if row[-1] == stop else row


# SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M config.json)
SMOLLM2_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                    max_position_embeddings=8192, rms_norm_eps=1e-5)


def smollm2_config(layers: int = 30, vocab: int = 49152, **overrides):
    """``(LlamaConfig, tokenizer)`` of SmolLM2-135M's shape with ``layers`` layers and a word-level
    stand-in tokenizer of ``vocab`` tokens (end-of-text id 0), offline."""
    from transformers import LlamaConfig

    from pengi_kit.data.tokenizer import word_tokenizer

    tokenizer = word_tokenizer([f"w{i}" for i in range(vocab - 5)])  # + 5 specials and punctuation
    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers, "vocab_size": len(tokenizer), **overrides},
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return config, tokenizer


def build_llama(device: str, layers: int = 30, vocab: int = 49152, init_std: float = 0.2):
    """A Llama-type LM of SmolLM2-135M shape (:func:`smollm2_config`) with random weights of std
    ``init_std``; fewer layers or a smaller vocabulary only for smoke runs."""
    from transformers import LlamaForCausalLM

    from pengi_kit.components.hf_causal_lm import HFCausalLM

    config, tokenizer = smollm2_config(layers, vocab, initializer_range=init_std)
    torch.manual_seed(0)
    return HFCausalLM(LlamaForCausalLM(config), tokenizer).to(device).eval()


def random_prefix(lm, rows: int, length: int = 80, std: float = 0.2) -> torch.Tensor:
    """A seeded random prefix (rows, length, hidden) on ``lm``'s device, at the scale of its embeddings."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(rows, length, lm.hidden_size, generator=g) * std).to(next(lm.parameters()).device)


@torch.inference_mode()
def transformers_generate(model, prefix: torch.Tensor, beam_size: int, new_tokens: int, stop: int,
                          attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """What a user would otherwise call: transformers' own beam search on the prefix (and its
    left-padding mask), set to pengi-kit's ``compat="none"`` search (the k best finished
    hypotheses, sum log p / length); token ids up to the stop id."""
    if attention_mask is None:
        attention_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
    seqs = model.generate(inputs_embeds=prefix, attention_mask=attention_mask,
                          num_beams=beam_size, max_new_tokens=new_tokens, do_sample=False, length_penalty=1.0,
                          early_stopping=False, eos_token_id=stop, pad_token_id=stop)
    return [row[: row.index(stop)] if stop in row else row for row in seqs.tolist()]


def versus_transformers(lm, prefix: torch.Tensor, batches: list[int], beam_size: int, new_tokens: int,
                        device: str, breakdown: bool = True, repeats: int = 1) -> list[dict]:
    """Times pengi-kit's ``generate`` (``compat="none"``) and :func:`transformers_generate` on the
    first ``batch`` rows of ``prefix`` for each batch size (after a warm-up of both), checks
    that they return the same tokens, and with ``breakdown`` also times one new token alone.
    Each time is the fastest of ``repeats`` runs, the two sides taking turns (on a shared
    machine the minimum is the least disturbed). One dict per batch size: seconds, ratio,
    same, and the breakdown's first-token and per-token times."""
    from pengi_kit.decoding import Decoding
    from pengi_kit.generation import generate

    def ours(x: torch.Tensor, n: int) -> list[list[int]]:
        return generate(lm, x, Decoding(method="beam", beam_size=beam_size, max_new_tokens=n))

    def theirs(x: torch.Tensor, n: int) -> list[list[int]]:
        return transformers_generate(lm.model, x, beam_size, n, lm.eos_token_id)

    ours(prefix[:1], 2), theirs(prefix[:1], 2)  # warm-up
    lengths = [new_tokens] + ([1] if breakdown and new_tokens > 1 else [])
    rows = []
    for batch in batches:
        x, best, outputs = prefix[:batch], {}, {}
        for _ in range(repeats):
            for n in lengths:
                for name, fn in (("theirs", theirs), ("ours", ours)):
                    seconds, outputs[name, n] = timed(lambda: fn(x, n), device)
                    best[name, n] = min(seconds, best.get((name, n), math.inf))
        out_ours, out_theirs = outputs["ours", new_tokens], outputs["theirs", new_tokens]
        row = {"batch": batch, "ours": best["ours", new_tokens], "theirs": best["theirs", new_tokens],
               "same": sum(a == b for a, b in zip(out_ours, out_theirs)),
               "lengths": (min(map(len, out_ours)), max(map(len, out_ours)))}
        row["ratio"] = row["theirs"] / row["ours"]
        if len(lengths) > 1:  # where the time goes: the prefix pass and first token, then each further token
            row["first_ours"], row["first_theirs"] = best["ours", 1], best["theirs", 1]
            row["step_ours"] = (row["ours"] - row["first_ours"]) / (new_tokens - 1)
            row["step_theirs"] = (row["theirs"] - row["first_theirs"]) / (new_tokens - 1)
        rows.append(row)
    return rows


def lm_vs_transformers(args: argparse.Namespace) -> None:
    """``--lm smollm2-135m``: pengi-kit's decoding against transformers' generate (see the module doc)."""
    start = time.perf_counter()
    lm = build_llama(args.device, args.layers, args.vocab, args.init_std)
    params = sum(p.numel() for p in lm.parameters()) / 1e6
    print(f"LM: Llama type, SmolLM2-135M shape ({args.layers} layers, vocabulary {args.vocab}), random weights "
          f"(std {args.init_std}), {params:.1f}M parameters, built in {time.perf_counter() - start:.0f} s; "
          f"device {args.device}, {torch.get_num_threads()} thread(s); prefix {args.prefix_length} embeddings, "
          f"beam {args.beam_size}, {args.max_new_tokens} new tokens; each time the fastest of {args.repeats}")
    prefix = random_prefix(lm, max(args.batches), args.prefix_length, args.init_std)
    for row in versus_transformers(lm, prefix, args.batches, args.beam_size, args.max_new_tokens, args.device,
                                   repeats=args.repeats):
        print(f"batch {row['batch']:>3}: pengi-kit {row['ours']:7.2f} s, transformers generate {row['theirs']:7.2f} s: "
              f"{row['ratio']:.2f}x; same tokens {row['same']}/{row['batch']}; "
              f"tokens per row {row['lengths'][0]}-{row['lengths'][1]}")
        if "step_ours" in row:
            step_ratio = f" ({row['step_theirs'] / row['step_ours']:.2f}x)" if row["step_ours"] > 0 else ""
            print(f"           prefix + first token: pengi-kit {row['first_ours']:.2f} s, transformers "
                  f"{row['first_theirs']:.2f} s ({row['first_theirs'] / row['first_ours']:.2f}x); per further token: "
                  f"pengi-kit {row['step_ours'] * 1e3:.0f} ms, transformers {row['step_theirs'] * 1e3:.0f} ms{step_ratio}")
        assert row["same"] == row["batch"], "pengi-kit's compat='none' beam search must return transformers' tokens"


def ragged_prefixes(lm, rows: int, longest: int, std: float) -> list[torch.Tensor]:
    """``rows`` seeded random prefixes whose lengths run evenly from ``longest`` / 2 to ``longest``."""
    g = torch.Generator().manual_seed(1)
    device = next(lm.parameters()).device
    lengths = [round(longest / 2 + i * (longest - longest / 2) / max(1, rows - 1)) for i in range(rows)]
    return [(torch.randn(n, lm.hidden_size, generator=g) * std).to(device) for n in lengths]


def ragged(args: argparse.Namespace) -> None:
    """``--lm smollm2-135m --ragged`` (see the module doc): three ratios, each measured side by side."""
    from pengi_kit.decoding import Decoding
    from pengi_kit.generation import generate, pad_prefixes, score

    lm = build_llama(args.device, args.layers, args.vocab, args.init_std)
    rows, new = 8, args.max_new_tokens
    prefixes = ragged_prefixes(lm, rows, args.prefix_length, args.init_std)
    batch, mask = pad_prefixes(prefixes)
    equal = torch.stack([torch.cat([p, p])[-args.prefix_length:] for p in prefixes])  # all as long as the longest
    beam = Decoding(method="beam", beam_size=args.beam_size, max_new_tokens=new)
    gen = torch.Generator().manual_seed(2)
    candidates = [[torch.randint(5, args.vocab, (int(n),), generator=gen).tolist() + [lm.eos_token_id]
                   for n in torch.randint(1, 3, (4,), generator=gen)] for _ in prefixes]
    print(f"LM: Llama type, SmolLM2-135M shape ({args.layers} layers, vocabulary {args.vocab}), random weights; "
          f"device {args.device}, {torch.get_num_threads()} thread(s); {rows} prefixes of "
          f"{min(map(len, prefixes))}-{max(map(len, prefixes))} embeddings; beam {args.beam_size}, {new} new tokens; "
          f"each time the fastest of {args.repeats}")
    runs = {
        "ragged": lambda: generate(lm, batch, beam, prefix_mask=mask),
        "equal": lambda: generate(lm, equal, beam),
        "transformers": lambda: transformers_generate(lm.model, batch, args.beam_size, new, lm.eos_token_id,
                                                      attention_mask=mask),
        "score": lambda: score(lm, batch, candidates, prefix_mask=mask),
        "greedy": lambda: generate(lm, batch, Decoding(method="greedy", max_new_tokens=2), prefix_mask=mask),
    }
    for fn in runs.values():  # warm-up
        fn()
    best, out = {}, {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds, out[name] = timed(fn, args.device)
            best[name] = min(seconds, best.get(name, math.inf))
    same = sum(a == b for a, b in zip(out["ragged"], out["transformers"]))
    print(f"ragged batch {best['ragged']:.2f} s vs equal-length batch of the longest {best['equal']:.2f} s: "
          f"{best['ragged'] / best['equal']:.2f}x (goal <= 1.2x)")
    print(f"transformers generate on the same ragged batch {best['transformers']:.2f} s: "
          f"{best['transformers'] / best['ragged']:.2f}x slower (goal >= 2x); same tokens {same}/{rows}")
    print(f"scoring 4 candidates per row over the forked prefix {best['score']:.2f} s vs a greedy one-word answer "
          f"{best['greedy']:.2f} s: {best['score'] / best['greedy']:.2f}x (goal <= 1.5x)")


def timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def pengi_vs_reference(args: argparse.Namespace) -> None:
    """``--lm gpt2``: pengi-kit against the reference wrapper's decoding (see the module doc)."""
    from pengi_kit.api import Pengi

    start = time.perf_counter()
    pengi = Pengi(build_model(args.device))
    params = sum(p.numel() for p in pengi.model.parameters()) / 1e6
    print(f"model: Pengi-base shape, random weights, {params:.0f}M parameters, built in "
          f"{time.perf_counter() - start:.0f} s; device {args.device}, {torch.get_num_threads()} thread(s); "
          f"beam {args.beam_size}, {args.max_new_tokens} new tokens, compat='pengi'")
    batches = args.batches
    rng = np.random.default_rng(0)
    waves = [(rng.uniform(-0.5, 0.5, int(RATE * SECONDS)).astype(np.float32), RATE)
             for _ in range(max([args.clips, args.ref_clips, *batches, 8]))]
    decoding = dict(method="beam", beam_size=args.beam_size, max_new_tokens=args.max_new_tokens, compat="pengi")
    tok = pengi.model.lm.tokenizer

    reference_generate(pengi, waves[0], args.beam_size, 2)  # warm-up
    pengi.generate(waves[:2], PROMPT, batch_size=2, **{**decoding, "max_new_tokens": 2})
    seconds, ref_tokens = timed(lambda: [reference_generate(pengi, w, args.beam_size, args.max_new_tokens)
                                         for w in waves[: args.ref_clips]], args.device)
    ref_rate = args.ref_clips / seconds
    print(f"reference (uncached, one clip at a time): {args.ref_clips} clips in {seconds:.1f} s = "
          f"{ref_rate:.3f} clips/s")
    ref_texts = [tok.decode(t, skip_special_tokens=True).strip() for t in ref_tokens]
    for batch in batches:
        n = max(args.clips, batch)
        seconds, texts = timed(lambda: pengi.generate(waves[:n], PROMPT, batch_size=batch, **decoding), args.device)
        same = sum(a == b for a, b in zip(texts, ref_texts))
        print(f"pengi-kit batch {batch:>3}: {n} clips in {seconds:.1f} s = {n / seconds:.3f} clips/s, "
              f"{n / seconds / ref_rate:.1f}x the reference; same tokens as the reference on "
              f"{same}/{len(ref_texts)} clips")
        assert same == len(ref_texts), "compat='pengi' must reproduce the reference's tokens"
    n = max(args.clips, 8)
    seconds, _ = timed(lambda: pengi.generate(waves[:n], PROMPT, batch_size=8, **{**decoding, "compat": "none"}),
                       args.device)
    print(f"pengi-kit batch   8, default mode (compat='none'): {n / seconds:.3f} clips/s, "
          f"{n / seconds / ref_rate:.1f}x the reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", choices=("gpt2", "smollm2-135m"), default="gpt2",
                        help="gpt2: Pengi-base against the reference; smollm2-135m: against transformers' generate")
    parser.add_argument("--ragged", action="store_true", help="smollm2: prefixes of different lengths in one batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="", help="comma-separated (default: 1,8,32 for gpt2, 1,8 for smollm2)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ref-clips", type=int, default=2, help="gpt2: clips the (slow) reference decodes")
    parser.add_argument("--clips", type=int, default=8, help="gpt2: clips we decode (at least one batch)")
    parser.add_argument("--prefix-length", type=int, default=80, help="smollm2: prefix embeddings (Pengi: 2 x 40)")
    parser.add_argument("--layers", type=int, default=30, help="smollm2: LM layers (SmolLM2-135M: 30)")
    parser.add_argument("--vocab", type=int, default=49152, help="smollm2: vocabulary size (SmolLM2: 49152)")
    parser.add_argument("--init-std", type=float, default=0.2, help="smollm2: std of the random weights")
    parser.add_argument("--repeats", type=int, default=1, help="smollm2: time each run this many times, keep the "
                        "fastest (a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batches = [int(b) for b in (args.batches or ("1,8,32" if args.lm == "gpt2" else "1,8")).split(",")]
    if args.ragged:
        ragged(args)
    elif args.lm == "gpt2":
        pengi_vs_reference(args)
    else:
        lm_vs_transformers(args)


if __name__ == "__main__":
    main()
