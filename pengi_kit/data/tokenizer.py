"""Tokenizers built from a user's own data, for language models trained from scratch.

:func:`build_tokenizer` reads the target texts and the prompts of one or more manifests
(the layout without a text encoder embeds prompts with the LM's tokenizer) and writes a
folder that ``transformers.AutoTokenizer`` loads, so a recipe names it by path::

    [model.lm]
    name = "gpt2"
    pretrained = ""
    tokenizer = "tok/"        # written by `pengi-kit data tokenizer train.jsonl --out tok/`

Two kinds:

- ``word``: one token per word and per punctuation mark (closed vocabulary, unknown words
  become ``[UNK]``). Short answers stay one or two tokens, so they are not drowned in the
  loss by long captions: the choice for small corpora of labels and short answers.
- ``bpe``: byte-level BPE as GPT-2's (open vocabulary, nothing is unknown): the choice for
  free-form captions.

Both end texts with ``<|endoftext|>``, which is also the padding token.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from pengi_kit.components._hf import EOS
from pengi_kit.errors import PengiKitError

__all__ = ["EOS", "UNK", "TOKENIZER_KINDS", "build_tokenizer", "word_tokenizer", "manifest_texts"]

UNK = "[UNK]"
TOKENIZER_KINDS = ("word", "bpe")
# Always in a word vocabulary, right after the specials, so a prompt's punctuation is known.
_PUNCTUATION = ("?", ":", ",")
_BPE_DEFAULT_SIZE = 1000


def _word_pieces() -> Any:
    """Words keep a leading '▁' for the space before them and punctuation marks stand alone, so
    decoding puts every space back where it was ("twice: zero", not "twice : zero")."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Metaspace(prepend_scheme="always"),
                                    pre_tokenizers.Punctuation("isolated")])


def word_tokenizer(texts: Iterable[str], vocab_size: int | None = None, min_count: int = 1) -> Any:
    """A closed-vocabulary ``PreTrainedTokenizerFast`` over the words and punctuation marks of
    ``texts``: one token each (and always '?', ':' and ','), plus ``<|endoftext|>`` (eos, bos
    and pad) and ``[UNK]`` for anything else. Words seen fewer than ``min_count`` times are
    left out, and with ``vocab_size`` (special tokens included) only the most frequent are
    kept. Ids follow the sorted words, so the same words always give the same ids.

    >>> tok = word_tokenizer(["a dog barks", "the dog: asleep?"])
    >>> ids = tok("the dog barks?")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (4, 'the dog barks?')
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    fixed = (EOS, UNK, *_PUNCTUATION)
    counts = Counter(piece for text in texts for piece, _ in _word_pieces().pre_tokenize_str(text))
    kept = sorted((w for w, n in counts.items() if n >= min_count and w not in fixed), key=lambda w: (-counts[w], w))
    if vocab_size is not None:
        if vocab_size <= len(fixed):
            raise PengiKitError(f"--vocab-size {vocab_size} leaves no room for words: a word tokenizer "
                                f"always holds {len(fixed)} tokens ({', '.join(fixed)}); give more")
        kept = kept[:vocab_size - len(fixed)]
    vocab = {w: i for i, w in enumerate([*fixed, *sorted(kept)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = _word_pieces()
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token=UNK)


def _bpe_tokenizer(texts: list[str], vocab_size: int, min_count: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (GPT-2's pre-tokenisation and decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(alphabet):
        raise PengiKitError(f"--vocab-size {vocab_size} is too small for a byte-level BPE tokenizer: its "
                            f"{len(alphabet)} byte tokens come first; use at least {len(alphabet) + 1}, or --kind word")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_count, special_tokens=[EOS],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def manifest_texts(manifests: Iterable[str | Path]) -> list[str]:
    """The target texts and the prompts of every usable row of ``manifests``. A row without a
    prompt or task counts too: a recipe's data table may give its prompt (pass that with
    ``texts``); lines a training run would skip for other reasons are skipped here too."""
    from pengi_kit.data.manifest import read_manifest

    texts: list[str] = []
    for path in manifests:
        examples, _ = read_manifest(path, on_error="skip", prompt="")
        for ex in examples:
            texts += [ex.text, ex.prompt]
    return texts


def build_tokenizer(manifests: Iterable[str | Path], out: str | Path, *, kind: str = "word",
                    vocab_size: int | None = None, min_count: int = 1, texts: Iterable[str] = ()) -> Path:
    """Build a ``word`` or ``bpe`` tokenizer from the texts and prompts of ``manifests`` (plus
    any extra ``texts``, e.g. a recipe's ``prompt``) and save it to the folder ``out``; returns it.

    ``vocab_size`` caps the vocabulary, special tokens included: ``word`` keeps the most
    frequent words (default: all), ``bpe`` learns merges up to it (default 1000).
    ``min_count``: ``word`` leaves out rarer words (they become ``[UNK]``), ``bpe`` learns
    no rarer merge. Load the folder with ``AutoTokenizer.from_pretrained(out)`` or name it
    in a recipe: ``[model.lm] tokenizer = "out/"``.
    """
    if kind not in TOKENIZER_KINDS:
        raise PengiKitError(f"tokenizer kind {kind!r} is unknown; use one of {', '.join(TOKENIZER_KINDS)}")
    if min_count < 1:
        raise PengiKitError(f"--min-count {min_count}: must be at least 1")
    corpus = [t for t in [*manifest_texts(manifests), *texts] if t.strip()]
    if not corpus:
        raise PengiKitError("no text to build a tokenizer from: the manifests have no usable rows "
                            "(check them with `pengi-kit data check`)")
    if kind == "word":
        tok = word_tokenizer(corpus, vocab_size, min_count)
    else:
        tok = _bpe_tokenizer(corpus, vocab_size or _BPE_DEFAULT_SIZE, min_count)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out
