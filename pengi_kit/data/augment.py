"""Augmentation of training clips on the fly, in the data workers (``[data.augment]``).

Models that must hear new voices, rooms and microphones are trained on varied copies of their
clips, drawn afresh each epoch (NeMo and Lhotse perturb speed and add noise and reverberation,
PANNs and LAION-CLAP mix clips up). pengi-kit does it to the waveform after loading, for every
task (Pengi, tagging, contrastive), on the training split only. Each clip's draws come from a
generator seeded by (seed, source, epoch, copy, example): every epoch differs (after the first
``fixed_epochs``, which repeat epoch 0's draws), any number of workers gives the same audio, and a
resumed run sees exactly what the uninterrupted one saw.

In order: speed (resampling: tempo and pitch together), pitch (a phase vocoder keeps the
duration), time shift, reverberation (an impulse response from a manifest or folder, or a
synthetic room), background noise at a signal-to-noise ratio against the clip's active
level (clips from manifests or folders, or white noise), gain; then the clip is cut or padded back to the encoder's length. Mixup
(tagging) mixes whole clips and their labels within a batch (:func:`mix_batch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pengi_kit.options import option

__all__ = ["Augment", "augment", "active_power", "draw_epoch", "mix_batch"]


@dataclass(frozen=True)
class Augment:
    """``[data.augment]``: what varies in the training clips. Ranges are ``[low, high]``, drawn
    uniformly; the defaults change nothing."""

    gain_db: list[float] = option([0.0, 0.0], "Gain in dB, drawn from [low, high].")
    shift: float = option(0.0, "Shift the clip in time by up to this fraction of its length, either way "
                                "(silence fills).", "[0, 1)")
    speed: list[float] = option([1.0, 1.0], "Speed perturbation: resample by a factor drawn from [low, high] "
                                             "(tempo and pitch change together), e.g. [0.9, 1.1].")
    pitch_semitones: list[float] = option([0.0, 0.0], "Pitch shift in semitones, drawn from [low, high]; the "
                                                       "duration is kept (phase vocoder).")
    noise: str | list[str] = option("", "Background noise: a manifest or folder of noise clips (a random stretch "
                                         "of one is added), or 'white'; a list of such sources, one drawn per clip "
                                         "(e.g. [\"street/\", \"cafe/\", \"white\"]); '' for none.")
    snr_db: list[float] = option([5.0, 30.0], "Signal-to-noise ratio of the added noise in dB, drawn from "
                                               "[low, high], against the clip's active level (its frames within "
                                               "40 dB of the loudest), so silence around a short sound does not "
                                               "count.")
    noise_prob: float = option(0.5, "Share of the clips that get noise.", "[0, 1]")
    reverb: str = option("", "Reverberation: a manifest or folder of impulse responses, or 'room' for synthetic "
                              "rooms (exponentially decaying noise); '' for none.")
    rt60: list[float] = option([0.2, 0.8], "Synthetic rooms: reverberation time (s), drawn from [low, high].")
    reverb_prob: float = option(0.5, "Share of the clips that get reverberation.", "[0, 1]")
    mixup: float = option(0.0, "Tagging: mix pairs of clips of a batch and their labels with a weight drawn "
                                "from Beta(mixup, mixup) (PANNs: 1.0); 0 for none.", ">= 0")
    fixed_epochs: int = option(0, "The first N epochs repeat epoch 0's examples and draws (shuffled anew; a "
                                  "stream in epoch 0's order too): a fixed varied set to learn from before fresh "
                                  "draws every epoch; 0: fresh draws from the start.", ">= 0")

    def __post_init__(self) -> None:
        if isinstance(self.noise, list) and not all(isinstance(n, str) and n for n in self.noise):
            raise ValueError(f"noise: give a source or a list of sources (manifests, folders, 'white'), "
                             f"got {self.noise}")
        for name in ("gain_db", "speed", "pitch_semitones", "snr_db", "rt60"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"{name}: give [low, high] with low <= high, got {low_high}")
        if self.speed[0] <= 0 or self.rt60[0] <= 0:
            raise ValueError("speed and rt60 must be positive")
        if self.fixed_epochs < 0:
            raise ValueError(f"fixed_epochs must be >= 0, got {self.fixed_epochs}")

    @property
    def active(self) -> bool:
        """Whether any clip changes (mixup aside, which acts on batches)."""
        return (self != Augment(mixup=self.mixup, fixed_epochs=self.fixed_epochs))

    @cached_property
    def _noise_sources(self) -> list[list[Any] | None]:
        """Each noise source's clips (None: white noise)."""
        sources = self.noise if isinstance(self.noise, list) else [self.noise] if self.noise else []
        return [None if source == "white" else _clips(source, "data.augment.noise") for source in sources]

    @cached_property
    def _impulse_responses(self) -> list[Any]:
        return _clips(self.reverb, "data.augment.reverb") if self.reverb not in ("", "room") else []

    def check(self) -> None:
        """Read the noise and impulse-response sources now (a one-line error names a bad one)."""
        _ = self._noise_sources, self._impulse_responses


def draw_epoch(config: Augment | None, epoch: int) -> int:
    """The epoch whose examples and draws training epoch ``epoch`` uses: epoch 0's during the first
    ``fixed_epochs`` (a data set's ``set_epoch`` keeps this one)."""
    return 0 if config is not None and epoch < config.fixed_epochs else epoch


def _clips(source: str, where: str) -> list[Any]:
    from pengi_kit.data.inputs import collect_inputs
    from pengi_kit.errors import RecipeError

    jobs, problems = collect_inputs([source], prompts=[""])
    clips = list(dict.fromkeys(job.audio for job in jobs))
    if not clips:
        raise RecipeError(f"{where} = {source!r}: no audio there ({problems[0] if problems else 'nothing found'}); "
                          "name a manifest or folder of audio files")
    return clips


def _uniform(rng: np.random.Generator, low_high: list[float]) -> float:
    low, high = low_high
    return float(rng.uniform(low, high)) if high > low else float(low)


def _resample(wave: np.ndarray, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times faster (shorter by that factor)."""
    import soxr

    return soxr.resample(wave, 1000.0 * factor, 1000.0, quality="HQ").astype(np.float32)


def _stretch(wave: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """``wave`` ``rate`` times faster at the same pitch: a phase vocoder (STFT, phases advanced
    at each bin's own frequency, inverse STFT with overlap-add)."""
    if len(wave) < n_fft:
        return wave
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), n_fft)[::hop] * window
    spec = np.fft.rfft(frames, axis=1)
    steps = np.arange(0, len(spec) - 1, rate)
    left, frac = steps.astype(int), (steps - steps.astype(int))[:, None]
    size, angle = np.abs(spec), np.angle(spec)
    magnitude = (1 - frac) * size[left] + frac * size[left + 1]
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    delta = angle[left + 1] - angle[left] - expected
    advance = expected + delta - 2 * np.pi * np.round(delta / (2 * np.pi))  # each bin at its own frequency
    phase = angle[0] + np.concatenate([np.zeros((1, spec.shape[1])), np.cumsum(advance[:-1], 0)])
    frames_out = np.fft.irfft(magnitude * np.exp(1j * phase), n=n_fft, axis=1) * window
    # overlap-add, one hop-long block of every frame at a time (n_fft is a multiple of hop)
    blocks, n = n_fft // hop, len(frames_out)
    result, norm = np.zeros((n + blocks - 1, hop)), np.zeros((n + blocks - 1, hop))
    for k in range(blocks):
        result[k:k + n] += frames_out[:, k * hop:(k + 1) * hop]
        norm[k:k + n] += window[k * hop:(k + 1) * hop] ** 2
    return (result.ravel() / np.maximum(norm.ravel(), 1e-8)).astype(np.float32)


def active_power(wave: np.ndarray, rate: int, floor_db: float = 40.0) -> float:
    """Mean power over the clip's active frames (20 ms; those within ``floor_db`` of the loudest):
    the level of a short sound in a longer clip, which the mean over the whole clip understates."""
    size = max(1, rate // 50)
    frames = np.mean(np.asarray(wave, dtype=np.float64)[: len(wave) // size * size].reshape(-1, size) ** 2, axis=1)
    if not len(frames) or frames.max() <= 0:
        return float(np.mean(np.asarray(wave, dtype=np.float64) ** 2))
    return float(np.mean(frames[frames >= frames.max() * 10 ** (-floor_db / 10)]))


def _room(rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room's impulse response: the direct sound, then noise decaying by 60 dB in ``rt60``."""
    n = max(1, int(rt60 * rate))
    t = np.arange(n) / rate
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    ir[0] = 1.0
    return ir.astype(np.float32)


def _excerpt(clip: Any, rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``seconds`` of ``clip`` (repeated when shorter) at ``rate``."""
    from pengi_kit.data.audio import load_audio

    return load_audio(clip.path, rate, start=clip.start, end=clip.end, clip_seconds=seconds, crop="random",
                      rng=rng)


def augment(wave: np.ndarray, rate: int, config: Augment, rng: np.random.Generator,
            length: int | None = None) -> np.ndarray:
    """``wave`` (mono float32 at ``rate``) varied as ``config`` says, with draws from ``rng``; cut
    (at random) or zero-padded back to ``length`` samples when given."""
    wave = np.asarray(wave, dtype=np.float32)
    speed = _uniform(rng, config.speed)
    if speed != 1.0:
        wave = _resample(wave, speed)
    semitones = _uniform(rng, config.pitch_semitones)
    if semitones:
        factor = 2.0 ** (semitones / 12)  # slower by factor, then resampled: the duration comes back
        wave = _resample(_stretch(wave, 1 / factor), factor)
    if config.shift:
        offset = int(rng.uniform(-config.shift, config.shift) * len(wave))
        shifted = np.zeros_like(wave)
        if offset >= 0:
            shifted[offset:] = wave[: len(wave) - offset]
        else:
            shifted[:offset] = wave[-offset:]
        wave = shifted
    if config.reverb and rng.random() < config.reverb_prob:
        irs = config._impulse_responses
        ir = (_room(rate, _uniform(rng, config.rt60), rng) if not irs else
              _excerpt(irs[int(rng.integers(len(irs)))], rate, 2.0, rng))
        ir = ir / (np.sqrt(np.sum(ir ** 2)) + 1e-8)
        level = np.sqrt(np.mean(wave ** 2))
        size = 1 << (len(wave) + len(ir) - 2).bit_length()  # FFT convolution: a room is thousands of taps
        wave = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(ir, size), size)[: len(wave)].astype(np.float32)
        wave *= level / (np.sqrt(np.mean(wave ** 2)) + 1e-8)
    if config.noise and rng.random() < config.noise_prob:
        sources = config._noise_sources
        clips = sources[int(rng.integers(len(sources)))] if len(sources) > 1 else sources[0]
        seconds = len(wave) / rate
        noise = (rng.standard_normal(len(wave)).astype(np.float32) if clips is None else
                 _excerpt(clips[int(rng.integers(len(clips)))], rate, seconds, rng)[: len(wave)])
        signal, background = active_power(wave, rate), np.mean(noise ** 2)
        if signal > 0 and background > 0:
            snr = _uniform(rng, config.snr_db)
            wave = wave + noise * math.sqrt(signal / (background * 10 ** (snr / 10)))
    gain = _uniform(rng, config.gain_db)
    if gain:
        wave = wave * 10 ** (gain / 20)
    if length is not None and len(wave) != length:
        if len(wave) > length:
            start = int(rng.integers(0, len(wave) - length + 1))
            wave = wave[start: start + length]
        else:
            wave = np.pad(wave, (0, length - len(wave)))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def mix_batch(audio: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """Mixup of a batch (B, T) in place: row i becomes w_i * row i + (1 - w_i) * row partner[i], with
    w_i ~ Beta(alpha, alpha) and ``partner`` a random permutation; returns (partner, w) so that the
    labels mix alike."""
    n = len(audio)
    partner = rng.permutation(n).tolist()
    weight = rng.beta(alpha, alpha, size=n).astype(np.float32)
    audio[:] = weight[:, None] * audio + (1 - weight[:, None]) * audio[partner]
    return partner, weight.tolist()
