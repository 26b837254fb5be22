"""conf/augment: training clips changed on the fly, per clip, so a model hears more than its training voices in
their training rooms. Evaluation never augments.

    augmenter = Augmenter(cfg.augment, sampling_rate)       the paths checked, the noise and impulse files listed
    audio, speed = augmenter(audio, seed, epoch, row, other) one training clip, changed (and its speed factor)
    augmenter.lengths(lengths, seed, epoch)                  every clip's length after speed perturbation this epoch

In order: speed perturbation (Kaldi's: the clip resampled, tempo and pitch together), reverberation (a simulated
room, or an impulse response from a folder), noise at a random SNR (recordings from a folder, e.g. MUSAN, else
colored noise or babble of other training clips) and gain. Every draw comes from its own random stream of (seed,
epoch, clip, transform), never the global one: the same in every run, loader worker and resume, whichever
transforms are on. SpecAugment happens inside the model (speechkit/models/: each family's own masks).
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from speechkit.config import AugmentConfig, ConfigError, first_line

log = logging.getLogger(__name__)

SPEED, REVERB, NOISE, GAIN, SPECAUGMENT = range(1, 6)  # each transform's own random stream
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif", ".sph")
LN_1000 = float(np.log(1000.0))  # RT60: the time the reverberation takes to fall by 60 dB


def draws(seed: int, epoch: int, row: int, transform: int) -> np.random.Generator:
    """The random stream of one transform of one clip in one epoch."""
    return np.random.default_rng([seed, epoch, row, transform])


class Augmenter:
    """One run's augmentation (conf/augment), checked when made: a folder that is missing or holds a file FFmpeg
    cannot read is refused naming its key."""

    def __init__(self, cfg: AugmentConfig, sampling_rate: int):
        self.cfg, self.rate = cfg, sampling_rate
        self.factors = [float(f) for f in cfg.speed.factors]
        self.noises = AudioFolder(cfg.noise.path, "augment.noise.path", sampling_rate) \
            if cfg.noise.prob and cfg.noise.path else None
        self.rirs = AudioFolder(cfg.reverb.path, "augment.reverb.path", sampling_rate) \
            if cfg.reverb.prob and cfg.reverb.path else None

    @property
    def changes_length(self) -> bool:
        return any(f != 1.0 for f in self.factors)

    def describe(self) -> str:
        c, parts = self.cfg, []
        if self.changes_length:
            parts.append("speed x" + "/".join(f"{f:g}" for f in self.factors))
        if c.reverb.prob:
            parts.append(f"reverberation on {c.reverb.prob:.0%} of the clips (" + (
                f"{len(self.rirs.files)} impulse responses from {c.reverb.path}" if self.rirs else
                f"simulated rooms, RT60 {c.reverb.rt60_s_min:g}-{c.reverb.rt60_s_max:g} s") + ")")
        if c.noise.prob:
            parts.append(f"noise on {c.noise.prob:.0%} at {c.noise.snr_db_min:g}-{c.noise.snr_db_max:g} dB SNR (" + (
                f"{len(self.noises.files)} recordings from {c.noise.path}" if self.noises else
                f"colored noise, {c.noise.babble_share:.0%} babble of {c.noise.babble_speakers} training clips") + ")")
        if c.gain.prob:
            parts.append(f"gain {c.gain.db_min:+g} to {c.gain.db_max:+g} dB on {c.gain.prob:.0%}")
        if c.warmup_epochs and (c.reverb.prob or c.noise.prob or c.gain.prob):
            parts.append(f"those shares reached over the first {c.warmup_epochs:g} epochs")
        return "; ".join(parts) or "none"

    def share(self, epoch: int) -> float:
        """How much of each change's share (reverb, noise, gain) applies in `epoch` (0 the first):
        augment.warmup_epochs ramps it up linearly, from none in the first epoch."""
        warmup = self.cfg.warmup_epochs
        return min(1.0, epoch / warmup) if warmup else 1.0

    @property
    def active(self) -> bool:
        c = self.cfg
        return self.changes_length or bool(c.reverb.prob or c.noise.prob or c.gain.prob)

    # ------------------------------------------------------------------------------------------- lengths
    def speed_of(self, seed: int, epoch: int, row: int) -> float:
        if not self.changes_length:
            return 1.0
        return self.factors[int(draws(seed, epoch, row, SPEED).integers(len(self.factors)))]

    @staticmethod
    def ratio(factor: float) -> Tuple[int, int]:
        """(up, down): a clip sped up by `factor` is resampled by up/down."""
        r = Fraction(1.0 / factor).limit_denominator(100)
        return r.numerator, r.denominator

    @classmethod
    def stretched(cls, samples, factor: float):
        """The length of a clip of `samples` after speed perturbation by `factor` (scipy's resample_poly)."""
        up, down = cls.ratio(factor)
        return -(-np.asarray(samples, dtype=np.int64) * up // down)

    def lengths(self, lengths: Sequence[int], seed: int, epoch: int) -> np.ndarray:
        """Every clip's length as this epoch's speed perturbation makes it (what batching by duration counts)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        speeds = np.array([self.speed_of(seed, epoch, i) for i in range(len(lengths))])
        out = lengths.copy()
        for f in set(self.factors):
            out[speeds == f] = self.stretched(lengths[speeds == f], f)
        return out

    # ------------------------------------------------------------------------------------------- the clip
    def __call__(self, audio: np.ndarray, seed: int, epoch: int, row: int,
                 other: Optional[Callable[[np.random.Generator], Optional[np.ndarray]]] = None
                 ) -> Tuple[np.ndarray, float]:
        """The training clip `row` changed for `epoch`, and the speed factor it got; `other(rng)`: another training
        clip, drawn with `rng`, for babble (None where there is none)."""
        c = self.cfg
        factor = self.speed_of(seed, epoch, row)
        if factor != 1.0:
            audio = speed(audio, factor)
        share = self.share(epoch)
        if c.reverb.prob:
            rng = draws(seed, epoch, row, REVERB)
            if rng.random() < c.reverb.prob * share:
                rir = self.rirs.impulse(rng) if self.rirs else simulated_rir(rng, c.reverb.rt60_s_min,
                                                                             c.reverb.rt60_s_max, self.rate)
                audio = reverberate(audio, rir)
        if c.noise.prob:
            rng = draws(seed, epoch, row, NOISE)
            if rng.random() < c.noise.prob * share:
                snr = rng.uniform(c.noise.snr_db_min, c.noise.snr_db_max)
                audio = add_noise(audio, self._noise(rng, audio.size, other), snr)
        if c.gain.prob:
            rng = draws(seed, epoch, row, GAIN)
            if rng.random() < c.gain.prob * share:
                audio = audio * np.float32(10 ** (rng.uniform(c.gain.db_min, c.gain.db_max) / 20))
        return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), factor

    def _noise(self, rng: np.random.Generator, n: int, other) -> np.ndarray:
        c = self.cfg.noise
        if self.noises:
            return self.noises.segment(rng, n)
        if other is not None and rng.random() < c.babble_share:
            voices = [v for v in (other(rng) for _ in range(c.babble_speakers)) if v is not None and v.size]
            if voices:
                return babble(rng, voices, n)
        return colored_noise(rng, n, rng.uniform(0.0, 2.0))


# ---------------------------------------------------------------------------------------------- transforms
def speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times as fast (tempo and pitch together), by polyphase resampling."""
    from scipy.signal import resample_poly

    up, down = Augmenter.ratio(factor)
    return resample_poly(audio, up, down).astype(np.float32)


def simulated_rir(rng: np.random.Generator, rt60_min: float, rt60_max: float, rate: int) -> np.ndarray:
    """A room impulse response: the direct sound, then a tail of exponentially decaying noise that falls 60 dB in an
    RT60 drawn from [rt60_min, rt60_max], with a direct-to-reverberant ratio of 0-10 dB (the statistical model of a
    diffuse field)."""
    rt60 = rng.uniform(rt60_min, rt60_max)
    t = np.arange(1, max(2, int(rt60 * rate))) / rate
    tail = rng.standard_normal(t.size) * np.exp(-LN_1000 * t / rt60)
    tail *= 10 ** (-rng.uniform(0.0, 10.0) / 20) / max(np.sqrt(np.sum(tail ** 2)), 1e-12)
    return np.concatenate([[1.0], tail]).astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`audio` convolved with `rir` (cut to the clip's length, so labels keep their times), at its own loudness."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(audio, rir)[:audio.size]
    return (wet * (rms(audio) / max(rms(wet), 1e-12))).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`noise` added to `audio` at `snr_db` (powers over the whole clip); a silent clip is left alone."""
    signal, level = rms(audio), rms(noise)
    if signal < 1e-8 or level < 1e-12:
        return audio
    return (audio + noise * (signal / level / 10 ** (snr_db / 20))).astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown (white noise shaped in the frequency
    domain, over a length the FFT is fast for)."""
    from scipy import fft

    size = fft.next_fast_len(max(n, 2), real=True)
    spectrum = fft.rfft(rng.standard_normal(size).astype(np.float32))
    f = np.arange(spectrum.size, dtype=np.float32)
    f[0] = 1.0
    spectrum *= f ** np.float32(-exponent / 2)
    spectrum[0] = 0.0
    noise = fft.irfft(spectrum, size)[:n]
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def babble(rng: np.random.Generator, voices: List[np.ndarray], n: int) -> np.ndarray:
    """Several other clips, each at the same loudness, looped to `n` samples from a random start, mixed."""
    mix = np.zeros(n, np.float32)
    for v in voices:
        mix += looped(rng, v, n) / max(rms(v), 1e-12)
    return mix


def looped(rng: np.random.Generator, audio: np.ndarray, n: int) -> np.ndarray:
    """`n` samples of `audio` from a random start, looped when shorter."""
    start = int(rng.integers(0, audio.size))
    return np.resize(np.roll(audio, -start), n)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


# ------------------------------------------------------------------------------------------ folders of audio
class AudioFolder:
    """The audio files under a folder (searched recursively: the MUSAN layout, a folder of impulse responses), each
    checked readable when listed; a segment or a whole file decoded when a clip needs it (no decoder is kept open,
    so loader workers can copy it)."""

    def __init__(self, path: str, key: str, rate: int):
        from torchcodec.decoders import AudioDecoder

        self.key, self.rate = key, rate
        root = os.path.expanduser(path)
        if not os.path.isdir(root):
            raise ConfigError(f"{key}={path}: no such folder")
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                       if f.lower().endswith(AUDIO_EXTENSIONS))
        if not found:
            raise ConfigError(f"{key}={path}: no audio files in it (looked for {', '.join(AUDIO_EXTENSIONS)})")
        self.files, self.seconds = [], []
        for file in found:
            try:
                meta = AudioDecoder(file, sample_rate=rate, num_channels=1).metadata
                seconds = meta.duration_seconds_from_header
                if not seconds:  # no duration in the header: decode it to know
                    seconds = AudioDecoder(file, sample_rate=rate).get_all_samples().data.shape[-1] / rate
            except Exception as err:  # FFmpeg's errors come in several types: all mean "cannot read this"
                raise ConfigError(f"{key}: {file} cannot be read as audio ({first_line(err)}); remove it or "
                                  "convert it") from None
            if seconds > 0:
                self.files.append(file)
                self.seconds.append(float(seconds))
        if not self.files:
            raise ConfigError(f"{key}={path}: its audio files are all empty")
        log.info("%s: %d audio files, %.1f minutes", key, len(self.files), sum(self.seconds) / 60)

    def _read(self, i: int, start_s: float = 0.0, stop_s: Optional[float] = None) -> np.ndarray:
        from torchcodec.decoders import AudioDecoder

        decoder = AudioDecoder(self.files[i], sample_rate=self.rate, num_channels=1)
        samples = decoder.get_all_samples() if stop_s is None else \
            decoder.get_samples_played_in_range(start_s, stop_s)
        return samples.data.numpy().reshape(-1).astype(np.float32, copy=False)

    def segment(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` samples of a random file from a random start (looped when the file is shorter)."""
        i = int(rng.integers(len(self.files)))
        length_s = n / self.rate
        start = rng.uniform(0.0, max(0.0, self.seconds[i] - length_s))
        audio = self._read(i, start, min(self.seconds[i], start + length_s))
        return looped(rng, audio, n) if audio.size else np.zeros(n, np.float32)

    def impulse(self, rng: np.random.Generator) -> np.ndarray:
        """A random impulse response, from its strongest sample on, at unit energy."""
        rir = self._read(int(rng.integers(len(self.files))))
        rir = rir[int(np.argmax(np.abs(rir))):] if rir.size else np.ones(1, np.float32)
        return rir / max(np.sqrt(np.sum(rir ** 2)), 1e-12)
