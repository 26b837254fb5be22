"""`python transcribe.py`: recordings of any length to text with word timestamps (txt, json, srt, vtt); the engine is
speechkit/recordings.py (windows read from the file, the model's head kind reading and joining them, vad=true's
speech regions)."""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig, OmegaConf

from speechkit.config import TranscribeConfig, check_required
from speechkit.recordings import OUTPUTS, Transcriber, each_file, find_audio, output_stems, write_outputs
from speechkit.validation import saved_model_dir


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
