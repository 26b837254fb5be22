"""`python transcribe.py`: recordings of any length to text with word timestamps (txt, json, srt, vtt).

A recording is read window by window straight from the file (FFmpeg through torchcodec, mono, at the model's rate),
never whole: memory stays flat however long it is. Each window is `chunk_length_s` of audio: the new part in its
middle plus `stride_length_s` of context on each side. Windows go through the model `batch_size` at a time.

- A CTC model: the model's frames over the context are dropped and the middle parts joined, so every stretch of
  audio is labelled by a window that heard what surrounds it; the joined frame labels are decoded once by the CTC
  tokenizer (or the shipped n-gram LM), with the frame offset of every word, which the frame duration turns into
  seconds.
- A sequence-to-sequence model (Whisper): windows of its own input window at most, each generating its tokens;
  consecutive windows' tokens are joined where they agree over their overlap. Segments (in the JSON) are timed by
  Whisper's own timestamp tokens where the checkpoint predicts them, else by the windows; words are spread over
  their segment.

With `vad=true`, silero-vad (speechkit/vad.py) first finds the speech; consecutive speech regions are packed into
windows of up to `chunk_length_s` of speech, their samples back to back (the pauses between them left out, as
faster-whisper does), and only those are transcribed, in batches, each on its own (no context across windows), every
word and segment time mapped back to the recording. The detector reads on in a thread while the model transcribes
the windows it has found. A recording with no speech gives an empty transcript. The JSON then holds `speech_regions` and
`speech_s`.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from speechkit.data.audio import open_recording, read_range
from speechkit.config import ConfigError, TranscribeConfig, check_required
from speechkit.hardware import make_accelerator
from speechkit.onnx_export import for_runtime
from speechkit.tasks import load_model_dir
from speechkit.tasks.asr import SpeechRecognition
from speechkit.tasks.asr.seq2seq import TIME_PRECISION
from speechkit.vad import RATE, Regions, Speech, SpeechDetector, Window, describe, packed
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
        if not isinstance(task, SpeechRecognition):
            raise ConfigError(f"model_dir: {model_dir} is a {task.name} model; transcribe.py needs a speech "
                              "recognition one")
        # the PyTorch model, or its checked ONNX export in its place (inference.runtime=onnx, onnx_int8)
        runtime = cfg.inference.runtime.value
        model = model.eval().to(self.accelerator.device) if runtime == "torch" else model.eval()
        self.task, self.model = task, for_runtime(model, model_dir, runtime)
        self.rate = task.sampling_rate
        self.output = READERS[task.kind.name](self)  # how the model's kind of head reads and joins windows
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


class CtcFrames:
    """A CTC model's windows: each window's new part as frames (argmax ids, or the logits when an n-gram LM decodes
    them), joined into the recording's frames and decoded once, with the frame offset of every word."""

    def __init__(self, transcriber: Transcriber):
        self.t = transcriber
        self.lm = transcriber.task.kind.lm  # the n-gram LM decoder shipped in model/, or None
        self.frame_s = transcriber.task.family.frame_hop(transcriber.model.config) / transcriber.rate
        self.decoder = "n-gram LM" if self.lm is not None else "greedy"

    def window(self, chunk_s: float, stride_s: float):
        return chunk_s, stride_s

    @torch.no_grad()
    def read(self, batch: List[Tuple[float, float, float, np.ndarray]]) -> List[np.ndarray]:
        """Per window (new start, new end, window start, samples), its new part's frames: argmax ids, or the logits
        themselves when an LM decodes them (frames x symbols: 0.6 MB per 5 minutes of a 32-symbol model)."""
        t = self.t
        features = t.task.inputs([w[3] for w in batch])
        inputs = {k: v.to(t.accelerator.device) for k, v in t.task.inputs.model_inputs(features).items()}
        with t.accelerator.autocast():
            logits = t.model(**inputs).logits
            ids = (logits.float() if self.lm is not None else logits.argmax(dim=-1)).cpu().numpy()
        out = []
        for (start, end, left, samples), row in zip(batch, ids):
            first, last = round((start - left) / self.frame_s), round((end - left) / self.frame_s)
            # never past the window's own frames (a shorter last window's row is padded to the batch's longest)
            valid = t.task.family.output_frames(t.model.config, samples.size, t.rate)
            out.append(row[first:min(last, valid)])
        return out

    def join(self, parts: List[np.ndarray], packed: Optional[List[Window]] = None) -> dict:
        """The recording's frames decoded once; or, for packed speech regions (`packed`: each part's window), each
        window decoded alone and its words' times mapped back to the recording."""
        if packed is not None:
            texts, words = [], []
            for frames, window in zip(parts, packed):
                region = self.join([frames])
                texts.append(region["text"])
                words += [{**w, "start": round(window.to_recording(w["start"]), 3),
                           "end": round(window.to_recording(w["end"], closing=True), 3)} for w in region["words"]]
            return {"text": " ".join(t for t in texts if t), "words": words}
        if self.lm is not None:  # beam search with the LM over the whole recording's frames
            text, _, offsets, *_ = self.lm.decode_beams(np.concatenate(parts))[0]
            spans = [(word, start, end) for word, (start, end) in offsets]
        else:
            decoded = self.t.task.processor.tokenizer.decode(np.concatenate(parts).tolist(), output_word_offsets=True)
            text, spans = decoded.text, [(w["word"], w["start_offset"], w["end_offset"]) for w in decoded.word_offsets]
        words = [Word(word, round(start * self.frame_s, 3), round(end * self.frame_s, 3)) for word, start, end in spans]
        return {"text": text, "words": [w.__dict__ for w in words]}


class Generated:
    """A sequence-to-sequence model's windows (Whisper): each window, its context included, generates a token
    sequence; consecutive sequences are joined where they agree over their overlap (`join_overlapping`, as the
    stock pipeline joins chunks), so a word spoken across a window's edge is kept once. Segments: where the
    checkpoint predicts timestamps (its generation config has Whisper's timestamp settings, as the openai
    checkpoints do), Whisper's own timestamp tokens time them; else each window's part of the text is a segment
    timed by the window's new part. A segment's words are spread over it in proportion to their length. Windows are
    the model's own input window at most."""

    def __init__(self, transcriber: Transcriber):
        self.t = transcriber
        tokenizer = transcriber.task.processor.tokenizer
        self.tokenizer, self.special = tokenizer, set(tokenizer.all_special_ids)
        generation = transcriber.model.generation_config
        self.timestamp_begin = generation.no_timestamps_token_id + 1 \
            if getattr(generation, "max_initial_timestamp_index", None) is not None \
            and getattr(generation, "no_timestamps_token_id", None) is not None else None
        self.decoder = transcriber.task.kind.decoder_name + (
            "; segments timed by Whisper's timestamp tokens" if self.timestamp_begin else "")

    def window(self, chunk_s: float, stride_s: float):
        window_s = self.t.task.family.input_window(self.t.task.feature_extractor) / self.t.rate
        chunk = min(chunk_s, window_s)
        stride = min(stride_s, chunk / 6)
        if (chunk, stride) != (chunk_s, stride_s):
            log.info("Windows of %g s with %g s of context on each side: the model's input window is %g s", chunk,
                     stride, window_s)
        return chunk, stride

    @torch.no_grad()
    def read(self, batch: List[Tuple[float, float, float, np.ndarray]]) -> List[tuple]:
        """Per window (new start, new end, window start, samples): its new part's bounds and its generated text
        tokens, each with the (start, end) in seconds of the segment it belongs to."""
        t = self.t
        features = t.task.inputs([w[3] for w in batch])["input_features"].to(t.accelerator.device)
        mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=features.device)
        with t.accelerator.autocast():
            generated = t.model.generate(input_features=features, attention_mask=mask,
                                         return_timestamps=self.timestamp_begin is not None)
        sequences = generated.cpu().tolist() if torch.is_tensor(generated) else generated["sequences"].cpu().tolist()
        return [(start, end, self._timed([i for i in ids if i not in self.special], left, start, end))
                for (start, end, left, _), ids in zip(batch, sequences)]

    def _timed(self, ids: List[int], left: float, start: float, end: float) -> List[Tuple[int, float, float]]:
        """Text tokens with their segment's (start, end): from the timestamp tokens (relative to the window's start
        `left`) where there are any, else the window's new part."""
        if self.timestamp_begin is None:
            return [(i, start, end) for i in ids]
        out, pending, opened = [], [], left  # opened: where the segment being read began
        for i in ids:
            if i < self.timestamp_begin:
                pending.append(i)
                continue
            at = left + (i - self.timestamp_begin) * TIME_PRECISION
            if pending:  # a segment's closing timestamp; the next one starts there unless it says otherwise
                out += [(token, opened, max(at, opened)) for token in pending]
                pending = []
            opened = at
        if pending:  # the last segment ran to the window's end
            out += [(token, opened, max(end, opened)) for token in pending]
        return out

    def join(self, parts: List[tuple], packed: Optional[List[Window]] = None) -> dict:
        """Windows joined where they overlap; packed speech regions (`packed`: each part's window) one after the
        other, their times mapped back to the recording."""
        sequences = [[token for token, _, _ in timed] for _, _, timed in parts]
        merged = join_overlapping(sequences) if packed is None else [
            (token, k, j) for k, sequence in enumerate(sequences) for j, token in enumerate(sequence)]
        groups: List[Tuple[Tuple[float, float], List[int]]] = []
        for token, window, position in merged:
            _, seg_start, seg_end = parts[window][2][position]
            if packed is not None:
                seg_start = packed[window].to_recording(seg_start)
                seg_end = packed[window].to_recording(seg_end, closing=True)
            if groups and groups[-1][0] == (seg_start, seg_end):
                groups[-1][1].append(token)
            else:
                groups.append(((seg_start, seg_end), [token]))
        segments, words, last = [], [], 0.0
        for (start, end), tokens in groups:
            text = self.tokenizer.decode(tokens).strip()
            if not text:
                continue
            start = max(start, last)  # a segment seen from a later window's context starts after the one before
            end = max(end, start)
            last = end
            segments.append({"start": round(start, 3), "end": round(end, 3), "text": text})
            spread = [len(w) + 1 for w in text.split()]
            at = start
            for word, share in zip(text.split(), spread):
                length = (end - start) * share / sum(spread)
                words.append({"word": word, "start": round(at, 3), "end": round(at + length, 3)})
                at += length
        return {"text": " ".join(s["text"] for s in segments), "words": words, "segments": segments}


READERS = {"ctc": CtcFrames, "seq2seq": Generated}  # speech recognition's head kind -> its windows' reader


def join_overlapping(sequences: List[List[int]]) -> List[Tuple[int, int, int]]:
    """Token sequences of consecutive overlapping windows joined into one, each token with the window it comes
    from and its position there: where the end of what is joined so far best agrees with the start of the next
    sequence (the most tokens in place, at least two, longer agreements preferred), the next one's tokens after
    that agreement are added."""
    merged = [(token, 0, j) for j, token in enumerate(sequences[0])] if sequences else []
    for k, sequence in enumerate(sequences[1:], 1):
        cut, best = 0, 0.0
        for i in range(1, min(len(merged), len(sequence)) + 1):
            matches = sum(a[0] == b for a, b in zip(merged[-i:], sequence[:i]))
            score = matches / i + i / 10000
            if matches > 1 and score > best:
                cut, best = i, score
        merged += [(token, k, j) for j, token in enumerate(sequence[cut:], cut)]
    return merged


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


def run(raw_cfg: DictConfig) -> dict:
    """Transcribe every file `audio=` names; returns {"done": [...], "failed": [...]} and exits 1 if any failed."""
    check_required(raw_cfg)
    cfg: TranscribeConfig = OmegaConf.to_object(raw_cfg)
    files = find_audio(cfg.audio)
    transcriber = Transcriber(saved_model_dir(cfg.model_dir), cfg)
    done, failed, audio_s, spent = [], [], 0.0, 0.0
    stems = output_stems(files, cfg.output_dir)
    for path, result in each_file(files, transcriber.transcribe, cfg.progress_bar, failed):
        stem = stems[path]
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
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
