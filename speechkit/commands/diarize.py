"""`python diarize.py`: who spoke when in recordings of any length, and with `asr_model_dir` who said what.

Each recording is read window by window straight from the file (FFmpeg through torchcodec, mono, at the model's rate;
memory holds one batch of windows and the per-frame speaker activity, a few kB a minute), diarized as the task
evaluates (speechkit/tasks/diarization.py: overlapping windows, speakers linked across them), its turns printed as
the ROCm recipe prints pyannote's (`start=0.0s stop=1.0s speaker_SPEAKER_00`) and written as `<name>.rttm`.

With `asr_model_dir`, the recording is also transcribed (speechkit/commands/transcribe.py: word timestamps, the
model's LM if it ships one) and each word goes to the speaker talking at its middle (or the nearest turn): the
speakers' turns with their words are written as `<name>.speakers.txt`, `.speakers.json` and `.speakers.srt`.
With `vad=true`, silero-vad (speechkit/vad.py) finds the speech: turns are cut to it (the model's false alarms in
silence dropped), and the ASR model transcribes the speech regions alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import List

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from speechkit.data.audio import open_recording, read_range
from speechkit.config import ConfigError, DiarizeConfig, TranscribeConfig, check_required
from speechkit.hardware import make_accelerator
from speechkit.data.references import Turn, write_rttm
from speechkit.tasks import load_model_dir
from speechkit.tasks.diarization import Diarization
from speechkit.commands.transcribe import Transcriber, _clock, each_file, find_audio, output_stems, write_texts
from speechkit.vad import SpeechDetector, describe, keep_speech
from speechkit.validation import saved_model_dir

log = logging.getLogger(__name__)


def recipe_lines(turns: List[Turn]) -> str:
    """Turns as the recipe prints pyannote's output."""
    return "\n".join(f"start={a:.1f}s stop={b:.1f}s speaker_{who}" for a, b, who in turns)


def diarize_file(task: Diarization, model, path: str, progress_bar: bool = True, vad=None) -> tuple:
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
        "txt": "".join(f"[{_clock(u['start'], '.')} - {_clock(u['end'], '.')}] {u['speaker']}: {u['text']}\n"
                       for u in utterances),
        "json": json.dumps({**result, "utterances": utterances}, indent=1, ensure_ascii=False) + "\n",
        "srt": "".join(f"{i}\n{_clock(u['start'], ',')} --> {_clock(u['end'], ',')}\n{u['speaker']}: {u['text']}\n\n"
                       for i, u in enumerate(utterances, 1)),
    }
    return write_texts(files, f"{stem}.speakers")


def run(raw_cfg: DictConfig) -> dict:
    """Diarize every file `audio=` names; returns {"done": [...], "failed": [...]} and exits 1 if any failed."""
    check_required(raw_cfg)
    cfg: DiarizeConfig = OmegaConf.to_object(raw_cfg)
    files = find_audio(cfg.audio)
    accelerator = make_accelerator(cfg.hw)
    task, model = load_model_dir(saved_model_dir(cfg.model_dir))
    if not isinstance(task, Diarization):
        raise ConfigError(f"model_dir: {cfg.model_dir} is a {task.name} model; diarize.py needs a diarization one "
                          "(train.py task=diarization)")
    model = model.to(accelerator.device).eval()
    transcriber = None
    if cfg.asr_model_dir:
        transcriber = Transcriber(saved_model_dir(cfg.asr_model_dir), TranscribeConfig(
            model_dir=cfg.asr_model_dir, audio=cfg.audio, progress_bar=cfg.progress_bar, vad=cfg.vad, hw=cfg.hw))
    vad = (transcriber.vad if transcriber else SpeechDetector()) if cfg.vad else None
    def work(path):
        return (*diarize_file(task, model, path, cfg.progress_bar, vad),
                transcriber.transcribe(path) if transcriber else None)

    done, failed = [], []
    stems = output_stems(files, cfg.output_dir)
    for path, (turns, seconds, words) in each_file(files, work, cfg.progress_bar, failed):
        stem = stems[path]
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        name = os.path.basename(stem)
        write_rttm(turns, name, stem + ".rttm")
        written = [stem + ".rttm"]
        speakers = sorted({w for _, _, w in turns})
        print(f"{path}: {seconds:.1f} s, {len(speakers)} speaker(s), {len(turns)} turn(s) -> {stem}.rttm", flush=True)
        print(recipe_lines(turns), flush=True)
        if words is not None:
            utterances = attribute(turns, words["words"])
            written += write_speakers(utterances, {"file": path, "duration_s": round(seconds, 3),
                                                   "speakers": speakers, "turns": [list(t) for t in turns],
                                                   "decoder": words["decoder"]}, stem)
            print("".join(f"  {u['speaker']}: {u['text']}\n" for u in utterances[:10]).rstrip(), flush=True)
        done.append({"file": path, "written": written})
    print(f"\nDiarized {len(done)} of {len(files)} file(s)" + (
        f"; {len(failed)} failed: " + ", ".join(f["file"] for f in failed) if failed else ""), flush=True)
    if failed:
        sys.exit(1)
    return {"done": done, "failed": failed}
