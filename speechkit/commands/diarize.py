"""`python diarize.py`: who spoke when in recordings of any length, and with `asr_model_dir` who said what.

Each recording is read window by window straight from the file (FFmpeg through torchcodec, mono, at the model's rate;
memory holds one batch of windows and the per-frame speaker activity, a few kB a minute), diarized as the task
evaluates (speechkit/tasks/diarization.py: overlapping windows, speakers linked across them), its turns printed as
the ROCm recipe prints pyannote's (`start=0.0s stop=1.0s speaker_SPEAKER_00`) and written as `<name>.rttm`.

With `asr_model_dir`, the recording is also transcribed (speechkit/recordings.py: word timestamps, the model's LM if
it ships one) and each word goes to the speaker talking at its middle (or the nearest turn): the speakers' turns with
their words are written as `<name>.speakers.txt`, `.speakers.json` and `.speakers.srt`. With `vad=true`, silero-vad
(speechkit/vad.py) finds the speech: turns are cut to it (the model's false alarms in silence dropped), and the ASR
model transcribes the speech regions alone. The engine is speechkit/recordings.py.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig, OmegaConf

from speechkit.config import ConfigError, DiarizeConfig, TranscribeConfig, check_required
from speechkit.data.references import write_rttm
from speechkit.hardware import make_accelerator
from speechkit.recordings import (Transcriber, attribute, diarize_file, each_file, find_audio, output_stems,
                                  recipe_lines, write_speakers)
from speechkit.tasks import load_model_dir
from speechkit.vad import SpeechDetector
from speechkit.validation import saved_model_dir


def run(raw_cfg: DictConfig) -> dict:
    """Diarize every file `audio=` names; returns {"done": [...], "failed": [...]} and exits 1 if any failed."""
    check_required(raw_cfg)
    cfg: DiarizeConfig = OmegaConf.to_object(raw_cfg)
    files = find_audio(cfg.audio)
    accelerator = make_accelerator(cfg.hw)
    task, model = load_model_dir(saved_model_dir(cfg.model_dir))
    if not hasattr(task, "diarize"):
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
