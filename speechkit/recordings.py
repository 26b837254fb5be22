"""Long recordings, read window by window: transcribed (transcribe.py, and diarize.py's words: text with word
timestamps as txt, json, srt, vtt) and diarized (diarize.py: who spoke when, each word given to its speaker).

A recording is read window by window straight from the file (FFmpeg through torchcodec, mono, at the model's rate),
never whole: memory stays flat however long it is. Each window is `chunk_length_s` of audio: the new part in its
middle plus `stride_length_s` of context on each side. Windows go through the model `batch_size` at a time, and the
model's head kind reads and joins them (its `long_form`, speechkit/kinds/): a CTC model's frames over the context
dropped and the middle parts joined and decoded once; a generating model's windows (its input window at most) each
generating tokens, joined where consecutive windows agree over their overlap.

With `vad=true`, silero-vad (speechkit/vad.py) first finds the speech; consecutive speech regions are packed into
windows of up to `chunk_length_s` of speech, their samples back to back (the pauses between them left out, as
faster-whisper does), and only those are transcribed, in batches, each on its own (no context across windows), every
word and segment time mapped back to the recording. The detector reads on in a thread while the model transcribes
the windows it has found. A recording with no speech gives an empty transcript. The JSON then holds `speech_regions` and
`speech_s`.

Diarizing (`diarize_file`): the diarization task reads a recording window by window (overlapping windows, speakers
linked across them: speechkit/tasks/diarization.py); with a speech detector the turns are cut to its speech;
`attribute` gives each transcribed word to the speaker talking at its middle.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from speechkit.data.audio import open_recording, read_range
from speechkit.data.references import Turn
from speechkit.config import ConfigError, TranscribeConfig
from speechkit.hardware import make_accelerator
from speechkit.onnx_export import for_runtime
from speechkit.tasks import load_model_dir
from speechkit.vad import RATE, Regions, Speech, SpeechDetector, Window, describe, keep_speech, packed

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac")
OUTPUTS = ("txt", "json", "srt", "vtt")


def find_audio(spec: str) -> List[str]:
    """`audio=`: a file, a folder (searched recursively for audio files) or a glob."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        found = [os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                 if f.lower().endswith(AUDIO_EXTENSIONS)]
    elif os.path.isfile(path):
        found = [path]
    else:
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    if not found:
        raise ConfigError(f"audio={spec}: no audio file there (a file, a folder of {'/'.join(AUDIO_EXTENSIONS)} "
                          "files, or a glob)")
    return sorted(found)


def windows(decoder, rate: int, chunk_s: float, stride_s: float) -> Iterator[Tuple[float, float, float, np.ndarray]]:
    """(start of the new part, its end, the window's start, its samples) along a recording, read window by
    window."""
    step = chunk_s - 2 * stride_s
    start = 0.0
    while True:
        left = max(0.0, start - stride_s)
        samples = read_range(decoder, left, start + step + stride_s)
        stop = left + samples.size / rate
        if samples.size == 0 or stop <= start:  # nothing new left
            return
        # the recording ends inside this window (short of it by more than a sample's rounding): no next one
        ended = stop < start + step + stride_s - 1.5 / rate
        yield start, stop if ended else start + step, left, samples
        if ended:
            return
        start += step


class Transcriber:
    """A saved speech recognition model (its family's classes: speechkit/models/) run over long recordings: the
    windows read from the file go through the model `batch_size` at a time and are joined as the model's kind of
    output allows (CtcFrames: frames; Generated: token sequences)."""

    def __init__(self, model_dir: str, cfg: TranscribeConfig):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg.hw)
        task, model = load_model_dir(model_dir)
        if task.pipeline != "automatic-speech-recognition":
            raise ConfigError(f"model_dir: {model_dir} is a {task.name} model; transcribe.py needs a speech "
                              "recognition one")
        # the PyTorch model, or its checked ONNX export in its place (inference.runtime=onnx, onnx_int8)
        runtime = cfg.inference.runtime.value
        model = model.eval().to(self.accelerator.device) if runtime == "torch" else model.eval()
        self.task, self.model = task, for_runtime(model, model_dir, runtime)
        self.rate = task.sampling_rate
        self.output = task.kind.long_form(self)  # how the model's head kind reads and joins windows
        self.chunk_s, self.stride_s = self.output.window(cfg.chunk_length_s, cfg.stride_length_s)
        self.vad = SpeechDetector() if cfg.vad else None

    def transcribe(self, path: str) -> dict:
        began = time.perf_counter()
        decoder = open_recording(path, self.rate)
        if self.vad is not None:  # the speech regions alone, packed into windows of up to chunk_s of speech
            found = self.vad.regions(path, self.chunk_s)  # handed on while the detector reads on
            packs: List[Window] = []  # every window read, to map its times back
            spans, count = self._packed(found, decoder, packs), None
        else:
            header = decoder.metadata.duration_seconds_from_header
            count = math.ceil(header / (self.chunk_s - 2 * self.stride_s)) if header else None
            spans = windows(decoder, self.rate, self.chunk_s, self.stride_s)
        bar = tqdm(total=count, desc=os.path.basename(path), unit="window", leave=False, dynamic_ncols=True,
                   disable=not self.cfg.progress_bar)
        parts, batch, read = [], [], []
        for k, (start, end, left, samples) in enumerate(spans):
            if samples.size == 0:
                continue
            batch.append((start, end, left, samples))
            read.append(k)
            if self.vad is None:
                duration = end
            if len(batch) == self.cfg.batch_size:
                parts += self.output.read(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            parts += self.output.read(batch)
            bar.update(len(batch))
        bar.close()
        if not parts and self.vad is None:
            raise ValueError(f"{path}: no audio samples")
        extra = {}
        if self.vad is not None:
            speech = Speech(found.found, found.total / RATE)
            duration = speech.duration_s
            log.info(describe(speech, path))
            extra = {"speech_s": round(speech.speech_s, 3),
                     "speech_regions": [[round(a, 3), round(b, 3)] for a, b in speech.regions]}
        # windows that overlap (joined over their context), or packed speech regions (each read alone, then mapped)
        result = self.output.join(parts, [packs[k] for k in read] if self.vad is not None else None)
        seconds = time.perf_counter() - began
        return {"file": path, "text": result.pop("text"), "duration_s": round(duration, 3),
                "decoder": self.output.decoder, "real_time_factor": round(seconds / max(duration, 1e-9), 6),
                **extra, **result}

    def _packed(self, found: Regions, decoder, packs: List[Window]) -> Iterator[tuple]:
        """Windows of the speech regions as they are found, each as a span on its own time line (new part =
        the whole window), its samples its regions' back to back; each window is also kept in `packs`."""
        for window in packed(found, self.chunk_s):
            packs.append(window)
            yield 0.0, window.duration_s, 0.0, window.samples(decoder)


def clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def cues(words: List[dict], max_words: int = 12, max_s: float = 6.0, pause_s: float = 1.0) -> List[dict]:
    """Words grouped into subtitle cues: a new cue after a pause, or when one grows too long."""
    out: List[dict] = []
    for w in words:
        last = out[-1] if out else None
        if last is None or w["start"] - last["end"] > pause_s or len(last["words"]) >= max_words \
                or w["end"] - last["start"] > max_s:
            out.append({"start": w["start"], "end": w["end"], "words": [w["word"]]})
        else:
            last["end"] = w["end"]
            last["words"].append(w["word"])
    return out


def write_outputs(result: dict, stem: str) -> List[str]:
    """<stem>.txt, .json, .srt and .vtt."""
    groups = cues(result["words"])
    files = {
        "txt": result["text"] + "\n",
        "json": json.dumps(result, indent=1, ensure_ascii=False) + "\n",
        "srt": "".join(f"{i}\n{clock(c['start'], ',')} --> {clock(c['end'], ',')}\n{' '.join(c['words'])}\n\n"
                       for i, c in enumerate(groups, 1)),
        "vtt": "WEBVTT\n\n" + "".join(
            f"{clock(c['start'], '.')} --> {clock(c['end'], '.')}\n{' '.join(c['words'])}\n\n" for c in groups),
    }
    return write_texts(files, stem)


def write_texts(files: dict, stem: str) -> List[str]:
    """Each {extension: text} to <stem>.<extension> (UTF-8); returns the paths."""
    written = []
    for ext, text in files.items():
        path = f"{stem}.{ext}"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def each_file(files: List[str], work, progress_bar: bool, failed: List[dict]):
    """(path, work(path)) for each file; one that `work` refuses with a ValueError (unreadable, empty) is said,
    skipped and added to `failed`, and the rest go on."""
    for path in tqdm(files, desc="Files", unit="file", dynamic_ncols=True, disable=not progress_bar or len(files) < 2):
        try:
            result = work(path)
        except ValueError as err:
            log.error("skipped %s", err)
            failed.append({"file": path, "error": str(err)})
            continue
        yield path, result


def output_stems(files: List[str], output_dir: Optional[str]) -> Dict[str, str]:
    """Where each recording's outputs go (without their extensions): beside it, or under output_dir in the folders
    the recordings have below their common folder (a/x.wav and b/x.wav stay apart), named by the recording without
    its extension; two recordings of one name in one folder (x.wav and x.mp3) keep their extensions (x.wav.txt,
    x.mp3.txt), so no output replaces another."""
    folders = {f: os.path.dirname(os.path.abspath(f)) for f in files}
    root = os.path.commonpath(list(folders.values())) if files else ""
    stems = {}
    for f in files:
        folder = os.path.normpath(os.path.join(os.path.expanduser(output_dir), os.path.relpath(folders[f], root))) \
            if output_dir else os.path.dirname(f)
        stems[f] = os.path.join(folder, os.path.splitext(os.path.basename(f))[0])
    shared = Counter(stems.values())
    return {f: os.path.join(os.path.dirname(stem), os.path.basename(f)) if shared[stem] > 1 else stem
            for f, stem in stems.items()}


def recipe_lines(turns: List[Turn]) -> str:
    """Turns as the recipe prints pyannote's output."""
    return "\n".join(f"start={a:.1f}s stop={b:.1f}s speaker_{who}" for a, b, who in turns)


def diarize_file(task, model, path: str, progress_bar: bool = True, vad=None) -> tuple:
    """(turns, duration in seconds) of one recording, read window by window; with a speech detector (`vad`), the
    turns cut to its speech regions."""
    rate = task.sampling_rate
    decoder = open_recording(path, rate)
    seconds = decoder.metadata.duration_seconds_from_header or decoder.metadata.duration_seconds
    if not seconds:
        raise ValueError(f"{path}: its length is unknown (no duration in the header); convert it to WAV or FLAC")
    total = int(round(seconds * rate))

    def read(start: int, count: int) -> np.ndarray:
        return read_range(decoder, start / rate, (start + count) / rate)

    bar = tqdm(total=round(seconds), desc=os.path.basename(path), unit="s", leave=False, dynamic_ncols=True,
               disable=not progress_bar)

    def progress(done: int, _total: int) -> None:
        bar.update(round(done / rate) - bar.n)

    try:
        turns = task.diarize(model, read, total, progress=progress)
    finally:
        bar.close()
    if vad is not None:
        speech = vad.speech(path, seconds)
        log.info(describe(speech, path))
        turns = keep_speech(turns, speech.regions)
    return turns, seconds


def attribute(turns: List[Turn], words: List[dict]) -> List[dict]:
    """Each word to the speaker talking at its middle (the nearest turn when nobody is); consecutive words of one
    speaker joined into one utterance: [{"speaker", "start", "end", "text"}]."""
    out: List[dict] = []
    for w in words:
        middle = (w["start"] + w["end"]) / 2
        talking = [t for t in turns if t[0] <= middle <= t[1]]
        pool = talking or turns
        if not pool:
            who = "UNKNOWN"
        else:
            who = min(pool, key=lambda t: (0 if t[0] <= middle <= t[1] else min(abs(t[0] - middle),
                                                                                   abs(t[1] - middle)),
                                           -(min(t[1], w["end"]) - max(t[0], w["start"]))))[2]
        if out and out[-1]["speaker"] == who:
            out[-1]["end"], out[-1]["text"] = w["end"], out[-1]["text"] + " " + w["word"]
        else:
            out.append({"speaker": who, "start": w["start"], "end": w["end"], "text": w["word"]})
    return out


def write_speakers(utterances: List[dict], result: dict, stem: str) -> List[str]:
    """<stem>.speakers.txt (one line per utterance), .json and .srt (the speaker in each cue)."""
    files = {
        "txt": "".join(f"[{clock(u['start'], '.')} - {clock(u['end'], '.')}] {u['speaker']}: {u['text']}\n"
                       for u in utterances),
        "json": json.dumps({**result, "utterances": utterances}, indent=1, ensure_ascii=False) + "\n",
        "srt": "".join(f"{i}\n{clock(u['start'], ',')} --> {clock(u['end'], ',')}\n{u['speaker']}: {u['text']}\n\n"
                       for i, u in enumerate(utterances, 1)),
    }
    return write_texts(files, f"{stem}.speakers")
