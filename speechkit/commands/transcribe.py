"""`python transcribe.py`: recordings of any length to text with word timestamps (txt, json, srt, vtt).

A recording is read window by window straight from the file (FFmpeg through torchcodec, mono, at the model's rate),
never whole: memory stays flat however long it is. Each window is `chunk_length_s` of audio: the new part in its
middle plus `stride_length_s` of context on each side; the model's frames over the context are dropped and the
middle parts joined, so every stretch of audio is labelled by a window that heard what surrounds it. Windows go
through the model `batch_size` at a time; the joined frame labels are decoded once by the CTC tokenizer, with the
frame offset of every word, which the frame duration turns into seconds.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from speechkit.data.audio import open_recording, read_range
from speechkit.config import ConfigError, TranscribeConfig, check_required
from speechkit.hardware import make_accelerator
from speechkit.tasks import load_model_dir
from speechkit.tasks.asr import SpeechRecognition
from speechkit.validation import saved_model_dir

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac")
OUTPUTS = ("txt", "json", "srt", "vtt")


@dataclass
class Word:
    word: str
    start: float
    end: float


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


def windows(decoder, rate: int, chunk_s: float, stride_s: float) -> Iterator[Tuple[float, float, np.ndarray]]:
    """(start of the new part, its end, the window's samples) along a recording, read window by window."""
    step = chunk_s - 2 * stride_s
    start = 0.0
    while True:
        left = max(0.0, start - stride_s)
        samples = read_range(decoder, left, start + step + stride_s)
        stop = left + samples.size / rate
        if samples.size == 0 or stop <= start:  # nothing new left
            return
        ended = stop < start + step + stride_s - 1e-6  # the recording ends inside this window: no next one
        yield start, stop if ended else start + step, samples
        if ended:
            return
        start += step


class Transcriber:
    """A saved speech recognition model (its family's classes: speechkit/models/), run over long recordings."""

    def __init__(self, model_dir: str, cfg: TranscribeConfig):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg.hw)
        task, model = load_model_dir(model_dir)
        if not isinstance(task, SpeechRecognition):
            raise ConfigError(f"model_dir: {model_dir} is a {task.name} model; transcribe.py needs a speech "
                              "recognition one")
        self.task, self.model = task, model.to(self.accelerator.device).eval()
        self.processor, self.lm = task.processor, task.lm  # the n-gram LM decoder shipped in model/, or None
        self.rate = task.sampling_rate
        self.frame_s = task.family.frame_hop(model.config) / self.rate

    @torch.no_grad()
    def _frame_ids(self, batch: List[Tuple[float, float, float, np.ndarray]]) -> List[np.ndarray]:
        """Per window (new start, new end, window start, samples), its new part's frames: argmax ids, or the logits
        themselves when an LM decodes them (frames x symbols: 0.6 MB per 5 minutes of a 32-symbol model)."""
        features = self.task.inputs([w[3] for w in batch])
        inputs = {k: v.to(self.accelerator.device) for k, v in self.task.inputs.model_inputs(features).items()}
        with self.accelerator.autocast():
            logits = self.model(**inputs).logits
            ids = (logits.float() if self.lm is not None else logits.argmax(dim=-1)).cpu().numpy()
        out = []
        for (start, end, left, samples), row in zip(batch, ids):
            first, last = round((start - left) / self.frame_s), round((end - left) / self.frame_s)
            # never past the window's own frames (a shorter last window's row is padded to the batch's longest)
            valid = self.task.family.output_frames(self.model.config, samples.size, self.rate)
            out.append(row[first:min(last, valid)])
        return out

    def transcribe(self, path: str) -> dict:
        began = time.perf_counter()
        decoder = open_recording(path, self.rate)
        header = decoder.metadata.duration_seconds_from_header
        step = self.cfg.chunk_length_s - 2 * self.cfg.stride_length_s
        bar = tqdm(total=math.ceil(header / step) if header else None, desc=os.path.basename(path), unit="window",
                   leave=False, dynamic_ncols=True, disable=not self.cfg.progress_bar)
        ids, batch, duration = [], [], 0.0
        for start, end, samples in windows(decoder, self.rate, self.cfg.chunk_length_s, self.cfg.stride_length_s):
            batch.append((start, end, max(0.0, start - self.cfg.stride_length_s), samples))
            duration = end
            if len(batch) == self.cfg.batch_size:
                ids += self._frame_ids(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            ids += self._frame_ids(batch)
            bar.update(len(batch))
        bar.close()
        if not ids:
            raise ValueError(f"{path}: no audio samples")
        if self.lm is not None:  # beam search with the LM over the whole recording's frames
            text, _, offsets, *_ = self.lm.decode_beams(np.concatenate(ids))[0]
            spans = [(word, start, end) for word, (start, end) in offsets]
        else:
            decoded = self.processor.tokenizer.decode(np.concatenate(ids).tolist(), output_word_offsets=True)
            text, spans = decoded.text, [(w["word"], w["start_offset"], w["end_offset"]) for w in decoded.word_offsets]
        words = [Word(word, round(start * self.frame_s, 3), round(end * self.frame_s, 3)) for word, start, end in spans]
        seconds = time.perf_counter() - began
        return {"file": path, "text": text, "duration_s": round(duration, 3),
                "decoder": "n-gram LM" if self.lm is not None else "greedy",
                "real_time_factor": round(seconds / max(duration, 1e-9), 4),
                "words": [w.__dict__ for w in words]}


# ---------------------------------------------------------------------------------------------- writing
def _clock(seconds: float, sep: str) -> str:
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
        "srt": "".join(f"{i}\n{_clock(c['start'], ',')} --> {_clock(c['end'], ',')}\n{' '.join(c['words'])}\n\n"
                       for i, c in enumerate(groups, 1)),
        "vtt": "WEBVTT\n\n" + "".join(
            f"{_clock(c['start'], '.')} --> {_clock(c['end'], '.')}\n{' '.join(c['words'])}\n\n" for c in groups),
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


def output_stem(path: str, output_dir: Optional[str]) -> str:
    """Where a recording's outputs go: <output_dir or its own folder>/<its name without extension>."""
    out_dir = os.path.expanduser(output_dir) if output_dir else os.path.dirname(path)
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])


def run(raw_cfg: DictConfig) -> dict:
    """Transcribe every file `audio=` names; returns {"done": [...], "failed": [...]} and exits 1 if any failed."""
    check_required(raw_cfg)
    cfg: TranscribeConfig = OmegaConf.to_object(raw_cfg)
    files = find_audio(cfg.audio)
    transcriber = Transcriber(saved_model_dir(cfg.model_dir), cfg)
    done, failed, audio_s, spent = [], [], 0.0, 0.0
    for path, result in each_file(files, transcriber.transcribe, cfg.progress_bar, failed):
        stem = output_stem(path, cfg.output_dir)
        write_outputs(result, stem)
        audio_s += result["duration_s"]
        spent += result["real_time_factor"] * result["duration_s"]
        done.append(path)
        print(f"{path}: {result['duration_s']:.1f} s, real-time factor {result['real_time_factor']:.3f} -> "
              f"{stem}.{{{','.join(OUTPUTS)}}}\n  {result['text'][:200]}", flush=True)
    print(f"\nTranscribed {len(done)} of {len(files)} file(s), {audio_s:.1f} s of audio, real-time factor "
          f"{spent / max(audio_s, 1e-9):.3f}" + (f"; {len(failed)} failed: " + ", ".join(f["file"] for f in failed)
                                                   if failed else ""), flush=True)
    if failed:
        sys.exit(1)
    return {"done": done, "failed": failed}
