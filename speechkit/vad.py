"""Where a recording has speech (`vad=true` in transcribe.py and diarize.py): silero-vad's detector, its trained model
shipped inside the silero-vad wheel (nothing downloaded), run as its torch-free sequence model (one onnxruntime call
per block of 512 frames of 32 ms) over the recording read block by block from the file, its LSTM state carried
across blocks, so memory stays flat however long the recording is. The per-frame speech probabilities become speech
regions by silero-vad's own state machine (`get_speech_timestamps_from_probs`), each region at most the model's
window long (a longer one is split at its best pause).

The detector runs in a thread of its own, ahead of its reader: the state machine is run section by section, each
section closed in the middle of a pause of a second or more (where the machine is idle, so the regions are those of
one run over the whole recording, tested), and the regions of a closed section are handed on at once. transcribe.py
packs them into windows of up to `chunk_length_s` of speech, their samples back to back and the pauses between them
left out (as faster-whisper does; each region keeps its 0.2 s margin of the pause), and transcribes a window while
the detector reads on; each time is mapped back to the recording. diarize.py keeps the speaker turns inside speech.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from speechkit.config import ConfigError
from speechkit.data.audio import open_recording, read_range

RATE = 16000  # the detector's rate (silero-vad takes 8 or 16 kHz)
FRAME, CONTEXT = 512, 64  # samples per frame at 16 kHz, and of the previous frame each one also hears
BLOCK_FRAMES = 512  # frames per onnxruntime call: 16.4 s
# silero-vad's defaults, but a wider margin around speech (its 30 ms would clip a word's first and last sounds, which
# a CTC model then cannot hear)
THRESHOLD = 0.5
NEG_THRESHOLD = THRESHOLD - 0.15  # below it a frame is silence to the state machine (silero-vad's own default)
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 200
MODEL_FILE = "silero_vad_16k_sequence.onnx"
SECTION_PAUSE_FRAMES = 32  # a pause of this many silent frames (1 s) or more closes a section in its middle


@dataclass
class Speech:
    """A recording's speech regions (start, end) in seconds, and its length."""

    regions: List[Tuple[float, float]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def speech_s(self) -> float:
        return sum(end - start for start, end in self.regions)


def packed(regions: Iterable[Tuple[float, float]], longest_s: float) -> Iterator["Window"]:
    """Consecutive regions packed into windows of at most `longest_s` of speech (the pauses between them left out),
    each window handed on as soon as the next region does not fit in it."""
    window: Optional[Window] = None
    for start, end in regions:
        if window is not None and window.duration_s + (end - start) <= longest_s:
            window.regions.append((start, end))
            continue
        if window is not None:
            yield window
        window = Window([(start, end)])
    if window is not None:
        yield window


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

    def blocks(self, path: str, stop: Optional[threading.Event] = None) -> Iterator[Tuple[np.ndarray, int]]:
        """Per block read from the file, the speech probability of each of its 32 ms frames, and the samples read so
        far at 16 kHz (the recording's length, after the last block). `stop` set: no more blocks are read."""
        decoder = open_recording(path, RATE)
        block_s = BLOCK_FRAMES * FRAME / RATE
        hidden = cell = np.zeros((1, 1, 128), dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        pending, total, at = np.zeros(0, np.float32), 0, 0.0
        while stop is None or not stop.is_set():
            samples = read_range(decoder, at, at + block_s)
            at += block_s
            total += samples.size
            pending = np.concatenate([pending, samples])
            ended = samples.size == 0 or samples.size < block_s * RATE - 1
            whole = pending.size if ended else pending.size // FRAME * FRAME  # the last frame zero-padded
            values = np.zeros(0, np.float32)
            if whole:
                rows = np.concatenate(list(self._frame_blocks(pending[:whole], FRAME, CONTEXT, BLOCK_FRAMES * 2)))
                rows[0, :CONTEXT] = context  # the previous block's last samples, as one long call would hear them
                context = rows[-1, -CONTEXT:].copy()
                values, hidden, cell = self.session.run(["speech_probs", "hn", "cn"],
                                                        {"input": rows, "h": hidden, "c": cell})
                pending = pending[whole:]
            yield values.reshape(-1), total
            if ended:
                return

    def probabilities(self, path: str) -> Tuple[np.ndarray, int]:
        """Per 32 ms frame, the probability of speech, and the recording's length in samples at 16 kHz."""
        probabilities, total = [np.zeros(0, np.float32)], 0
        for values, total in self.blocks(path):
            probabilities.append(values)
        return np.concatenate(probabilities), total

    def regions(self, path: str, longest_s: float) -> "Regions":
        """The speech regions of the recording at `path`, none longer than `longest_s`, as the detector finds them:
        it reads on in a thread of its own while they are used."""
        return Regions(self, path, longest_s)

    def speech(self, path: str, longest_s: float) -> Speech:
        """The speech regions of the recording at `path`, none longer than `longest_s`, all at once."""
        found = self.regions(path, longest_s)
        return Speech(list(found), found.total / RATE)

    def state_machine(self, probabilities: np.ndarray, samples: int, longest_s: float) -> List[Tuple[int, int]]:
        """silero-vad's state machine over the probabilities of `samples` samples: regions (start, end) in
        samples."""
        found = self._timestamps(probabilities.tolist(), sampling_rate=RATE, threshold=THRESHOLD,
                                 neg_threshold=NEG_THRESHOLD, min_speech_duration_ms=MIN_SPEECH_MS,
                                 min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS,
                                 max_speech_duration_s=longest_s, audio_length_samples=samples)
        return [(s["start"], s["end"]) for s in found]


class Regions:
    """Speech regions (start, end) in seconds, handed on section by section while the detector reads on in a thread:
    iterate over it; afterwards `total` is the recording's length in samples at 16 kHz.

    A section ends in the middle of the last pause of `SECTION_PAUSE_FRAMES` silent frames or more (each below the
    state machine's silence threshold) seen so far. There the machine is idle, as it is at the start of a recording,
    and the regions on either side are more than twice the margin apart, so each section's margins are its own:
    the regions are those of one run over the whole recording."""

    def __init__(self, detector: SpeechDetector, path: str, longest_s: float):
        self.detector, self.path, self.longest_s = detector, path, longest_s
        self.total = 0
        self.found: List[Tuple[float, float]] = []  # every region handed on so far

    def __iter__(self) -> Iterator[Tuple[float, float]]:
        blocks: queue.Queue = queue.Queue()
        stop = threading.Event()
        self.total, self.found = 0, []  # read again from the start

        def read() -> None:
            try:
                for block in self.detector.blocks(self.path, stop):
                    blocks.put(block)
                blocks.put(None)
            except BaseException as err:  # raised again by the reader
                blocks.put(err)

        threading.Thread(target=read, name="speech-detector", daemon=True).start()
        pending, first = np.zeros(0, np.float32), 0  # the open section's probabilities, and its first frame
        try:
            while True:
                block = blocks.get()
                if isinstance(block, BaseException):
                    raise block
                if block is None:
                    break
                values, self.total = block
                pending = np.concatenate([pending, values])
                cut = section_end(pending)
                if cut:
                    yield from self._found(pending[:cut], first, cut * FRAME)
                    pending, first = pending[cut:], first + cut
            if self.total == 0:
                raise ValueError(f"{self.path}: no audio samples")
            yield from self._found(pending, first, self.total - first * FRAME)
        finally:
            stop.set()

    def _found(self, probabilities: np.ndarray, first: int, samples: int) -> Iterator[Tuple[float, float]]:
        offset = first * FRAME
        for start, end in self.detector.state_machine(probabilities, samples, self.longest_s):
            self.found.append(((offset + start) / RATE, (offset + end) / RATE))
            yield self.found[-1]


def section_end(probabilities: np.ndarray) -> int:
    """Where a section of these frames' probabilities may end: the middle of the last run of `SECTION_PAUSE_FRAMES`
    or more silent frames; 0 where there is none."""
    silent = np.concatenate([[0], (probabilities < NEG_THRESHOLD).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(silent))  # run starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    long = np.flatnonzero(ends - starts >= SECTION_PAUSE_FRAMES)
    return int((starts[long[-1]] + ends[long[-1]]) // 2) if long.size else 0


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
