"""Generation speed: pengi-kit's batched KV-cached decoding against the reference
wrapper's way (one clip at a time, the whole sequence re-run through GPT-2 at every
step, logits for every position), on a model of Pengi-base shape with random weights.

The model is built offline from configs: HTSAT-tiny (7 s at 44.1 kHz), CLIP ViT-B/16
text tower shape, two 4-layer transformer mappers with k = 40, GPT-2 base shape with
GPT-2's 50257-token vocabulary (a word-level stand-in tokenizer of that size, since
GPT-2's own is not available offline). Both sides run in this process from waveforms
in memory to text, with beam 5 and 30 new tokens in ``compat="pengi"`` mode, so they
must return the same tokens; this is checked on the clips the reference decodes.
Random weights rarely emit the stop token, so every clip runs the full 30 steps.

    python benchmarks/generation.py [--device cpu|cuda] [--ref-clips 2] [--clips 8]
                                    [--batches 1,8,32] [--threads N]

Ours decodes max(--clips, batch) clips at each batch size. Prints clips/s and the
ratio to the reference for each batch size.
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

    from pengi_kit.components._hf import word_tokenizer
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


def timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ref-clips", type=int, default=2, help="clips the (slow) reference decodes")
    parser.add_argument("--clips", type=int, default=8, help="clips we decode (at least one batch)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pengi_kit.api import Pengi

    start = time.perf_counter()
    pengi = Pengi(build_model(args.device))
    params = sum(p.numel() for p in pengi.model.parameters()) / 1e6
    print(f"model: Pengi-base shape, random weights, {params:.0f}M parameters, built in "
          f"{time.perf_counter() - start:.0f} s; device {args.device}, {torch.get_num_threads()} thread(s); "
          f"beam {args.beam_size}, {args.max_new_tokens} new tokens, compat='pengi'")
    batches = [int(b) for b in args.batches.split(",")]
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


if __name__ == "__main__":
    main()
