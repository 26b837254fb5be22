"""Where a recording has speech (`vad=true` in transcribe.py and diarize.py): silero-vad's detector, its trained model
shipped inside the silero-vad wheel (nothing downloaded), run as its torch-free sequence model (one onnxruntime call
per block of 512 frames of 32 ms) over the recording read block by block from the file, its LSTM state carried
across blocks, so memory stays flat however long the recording is. The per-frame speech probabilities become speech
regions by silero-vad's own state machine (`get_speech_timestamps_from_probs`), each region at most the model's
window long (a longer one is split at its best pause).

transcribe.py then packs consecutive regions into windows of up to `chunk_length_s` of speech, their samples back
to back and the pauses between them left out (as faster-whisper does; each region keeps its 0.2 s margin of the
pause, so two regions meet over 0.4 s of it), transcribes only those and maps each time back to the recording;
diarize.py keeps the speaker turns inside speech.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from speechkit.config import ConfigError
from speechkit.data.audio import open_recording, read_range

RATE = 16000  # the detector's rate (silero-vad takes 8 or 16 kHz)
FRAME, CONTEXT = 512, 64  # samples per frame at 16 kHz, and of the previous frame each one also hears
BLOCK_FRAMES = 512  # frames per onnxruntime call: 16.4 s
# silero-vad's defaults, but a wider margin around speech (its 30 ms would clip a word's first and last sounds, which
# a CTC model then cannot hear)
THRESHOLD = 0.5
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 200
MODEL_FILE = "silero_vad_16k_sequence.onnx"


@dataclass
class Speech:
    """A recording's speech regions (start, end) in seconds, and its length."""

    regions: List[Tuple[float, float]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def speech_s(self) -> float:
        return sum(end - start for start, end in self.regions)

    def windows(self, longest_s: float) -> List["Window"]:
        """Consecutive regions packed into windows of at most `longest_s` of speech (the pauses between them left
        out)."""
        out: List[Window] = []
        for start, end in self.regions:
            if out and out[-1].duration_s + (end - start) <= longest_s:
                out[-1].regions.append((start, end))
            else:
                out.append(Window([(start, end)]))
        return out


@dataclass
class Window:
    """Speech regions heard as one stretch of audio, their samples back to back (the pauses between them left out),
    and the way back from a time in the window to the same moment in the recording."""

    regions: List[Tuple[float, float]]

    @property
    def duration_s(self) -> float:
        return sum(end - start for start, end in self.regions)

    def samples(self, decoder) -> np.ndarray:
        """The regions' samples, read from the recording's decoder, one after the other."""
        return np.concatenate([read_range(decoder, start, end) for start, end in self.regions])

    def to_recording(self, at: float, closing: bool = False) -> float:
        """`at` seconds into the window as seconds into the recording. A time where two regions meet is the next
        region's start, or with `closing` (the end of a word or segment) the first one's end."""
        offset = 0.0
        for start, end in self.regions:
            if at < offset + end - start or (closing and at <= offset + end - start):
                return start + max(0.0, at - offset)
            offset += end - start
        return self.regions[-1][1]


class SpeechDetector:
    """silero-vad in an onnxruntime session (one thread: it is small, and the model being served keeps the rest)."""

    def __init__(self):
        try:
            import torch

            threads = torch.get_num_threads()
            try:  # importing silero_vad sets torch to one thread for its own model: put it back
                from importlib.resources import files

                from silero_vad import get_speech_timestamps_from_probs
                from silero_vad.sequence_vad import SileroVADSequence, frame_blocks
            finally:
                torch.set_num_threads(threads)
        except ImportError as err:
            raise ConfigError(f"vad=true needs silero-vad and onnxruntime ({err.name} is not installed): "
                              "pip install -e '.[vad]'") from None
        self._timestamps, self._frame_blocks = get_speech_timestamps_from_probs, frame_blocks
        self.session = SileroVADSequence(str(files("silero_vad.data") / MODEL_FILE), RATE).session

    def probabilities(self, path: str) -> Tuple[np.ndarray, int]:
        """Per 32 ms frame, the probability of speech, and the recording's length in samples at 16 kHz."""
        decoder = open_recording(path, RATE)
        block_s = BLOCK_FRAMES * FRAME / RATE
        hidden = cell = np.zeros((1, 1, 128), dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        pending, probabilities, total, at = np.zeros(0, np.float32), [], 0, 0.0
        while True:
            samples = read_range(decoder, at, at + block_s)
            at += block_s
            total += samples.size
            pending = np.concatenate([pending, samples])
            ended = samples.size == 0 or samples.size < block_s * RATE - 1
            whole = pending.size if ended else pending.size // FRAME * FRAME  # the last frame zero-padded
            if whole:
                rows = np.concatenate(list(self._frame_blocks(pending[:whole], FRAME, CONTEXT, BLOCK_FRAMES * 2)))
                rows[0, :CONTEXT] = context  # the previous block's last samples, as one long call would hear them
                context = rows[-1, -CONTEXT:].copy()
                values, hidden, cell = self.session.run(["speech_probs", "hn", "cn"],
                                                        {"input": rows, "h": hidden, "c": cell})
                probabilities.append(values.reshape(-1))
                pending = pending[whole:]
            if ended:
                break
        return (np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)), total

    def speech(self, path: str, longest_s: float) -> Speech:
        """The speech regions of the recording at `path`, none longer than `longest_s`."""
        probabilities, total = self.probabilities(path)
        if total == 0:
            raise ValueError(f"{path}: no audio samples")
        found = self._timestamps(probabilities.tolist(), sampling_rate=RATE, threshold=THRESHOLD,
                                 min_speech_duration_ms=MIN_SPEECH_MS, min_silence_duration_ms=MIN_SILENCE_MS,
                                 speech_pad_ms=SPEECH_PAD_MS, max_speech_duration_s=longest_s,
                                 audio_length_samples=total)
        return Speech([(s["start"] / RATE, s["end"] / RATE) for s in found], total / RATE)


def keep_speech(turns: List[tuple], regions: List[Tuple[float, float]]) -> List[tuple]:
    """Speaker turns (start, end, speaker) cut to the speech regions: what the detector hears as silence is nobody's
    turn (pieces of one turn in regions that touch stay one)."""
    out = []
    for start, end, who in turns:
        for a, b in regions:
            lo, hi = round(max(start, a), 3), round(min(end, b), 3)
            if hi <= lo:
                continue
            if out and out[-1][2] == who and lo - out[-1][1] <= 1e-3:
                out[-1] = (out[-1][0], hi, who)
            else:
                out.append((lo, hi, who))
    return sorted(out)


def describe(speech: Speech, path: str) -> str:
    return (f"{os.path.basename(path)}: speech in {len(speech.regions)} region(s), {speech.speech_s:.1f} of "
            f"{speech.duration_s:.1f} s")
