"""The evaluation pass every task shares: each clip of a loader scored once across all processes, its prediction
gathered by row; the task turns the predictions into metrics (speechkit/tasks/)."""

from __future__ import annotations

import csv
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm


@dataclass
class EvalResult:
    """One evaluation: `metrics` as logged (eval_loss first, then the task's), `rank` (smaller is better: how the
    best checkpoint is chosen), `objective` (what sweeps minimise), `summary` (one line for people), and per clip its
    dataset row and the predictions file's columns."""

    metrics: Dict[str, float]
    rank: Tuple[float, ...]
    objective: float
    summary: str
    rows: List[int]
    predictions: List[dict] = field(default_factory=list)
    tables: Dict[str, List[dict]] = field(default_factory=dict)  # extra per-class tables (classification)
    # the same model scored on the run's other evaluation sets (eval_sets), by name
    eval_sets: Dict[str, "EvalResult"] = field(default_factory=dict)


# Seconds of audio report.html keeps playable at most (clips/, FLAC: about 20 kB per second of 16 kHz speech, so some
# 35 MB), worst clips first: a large evaluation set does not fill the run dir with a copy of itself.
REPORT_AUDIO_S = 1800.0

# forward(model, batch) -> the model's output, its loss included (the task's forward)
Forward = Callable[[torch.nn.Module, dict], object]
# predict(model_output, batch, unwrapped_model) -> one tensor per clip, stacked on dim 0, padded on dim 1
Predict = Callable[[object, dict, torch.nn.Module], torch.Tensor]


@torch.no_grad()
def gather_predictions(model, loader, accelerator: Accelerator, forward: Forward, predict: Predict,
                       pad_value: float = 0) -> Tuple[Dict[int, torch.Tensor], float, int]:
    """Run `model` over `loader`; returns {dataset row: prediction (on the CPU)}, the mean loss, and how many
    predictions were gathered before duplicates (rows repeated to even out processes) were dropped. Only what
    `predict` keeps leaves the device."""
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    by_row: Dict[int, torch.Tensor] = {}
    loss_sum, loss_count, gathered_count = 0.0, 0, 0
    for batch in tqdm(loader, desc="Evaluating", leave=False, dynamic_ncols=True,
                      disable=not accelerator.is_main_process):
        if batch is None:
            continue
        out = forward(model, batch)
        pred = predict(out, batch, unwrapped)
        if pred.dim() > 1:
            pred = accelerator.pad_across_processes(pred, dim=1, pad_index=pad_value)
        losses = out.loss.detach().float().reshape(1).repeat(len(pred)) if out.loss is not None else None
        gathered = accelerator.gather_for_metrics((pred, batch["index"]) + ((losses,) if losses is not None else ()))
        gathered_count += len(gathered[1])
        for row, p in zip(gathered[1].tolist(), gathered[0].cpu()):
            by_row[row] = p  # keyed by row: a row duplicated to even out processes counts once
        if losses is not None:
            loss_sum += float(gathered[2].sum())
            loss_count += len(gathered[2])
    if was_training:
        model.train()
    return by_row, loss_sum / max(loss_count, 1), gathered_count


def keep_clips(task, result: EvalResult, rows, run, ids: List[str], durations,
               limit_s: Optional[float] = None) -> Tuple[Dict[int, str], str]:
    """The clips report.html plays, copied into the run dir's clips/ folder as FLAC at the model's rate (mono,
    16-bit), in the order the task puts them (worst first) until `limit_s` seconds of audio; returns {k: the clip's
    path relative to the run dir} (k: its place in result.rows) and a line saying what was kept."""
    import numpy as np
    import soundfile as sf

    from speechkit import data
    from speechkit.data.audio import AudioError, decode

    limit_s = REPORT_AUDIO_S if limit_s is None else limit_s
    if os.path.isdir(run.clips):  # an earlier evaluation into this run dir: its clips are not this one's
        shutil.rmtree(run.clips)
    wanted = task.report_clips(result)
    if not wanted:
        return {}, ""
    os.makedirs(run.clips)
    cached = data.PCM in rows.column_names
    if cached:  # as stored (datasets' numpy format would widen int16 to int64)
        dtype = rows.features[data.PCM].feature.dtype
        audio = rows.select_columns([data.PCM]).with_format("numpy", dtype=dtype)
    else:
        audio = rows.select_columns([data.AUDIO])
    kept, total = {}, 0.0
    for k in wanted:
        row, seconds = result.rows[k], float(durations[k])
        if total + seconds > limit_s:
            continue
        try:
            samples = audio[row][data.PCM] if cached else decode(audio[row][data.AUDIO], task.sampling_rate)
        except AudioError:  # the file went away since it was scored: no player for it
            continue
        samples = np.asarray(samples, dtype=np.float32) / (data.PCM_SCALE if cached and dtype == "int16" else 1.0)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(ids[k]))[0])[:40]
        name = f"{len(kept):05d}-{stem}.flac"
        sf.write(os.path.join(run.clips, name), np.clip(samples, -1.0, 1.0), task.sampling_rate, format="FLAC",
                 subtype="PCM_16")
        kept[k] = f"{os.path.basename(run.clips)}/{name}"
        total += seconds
    note = (f"{len(kept)} of {len(wanted)} {task.unit} playable ({total:.0f} s of audio in "
            f"{os.path.basename(run.clips)}/, worst first")
    note += f"; the rest left out past {limit_s:g} s)." if len(kept) < len(wanted) else ")."
    return kept, note


def eval_sets_section(task, result: EvalResult) -> tuple:
    """report.html's table of the shipped model's scores on the eval split and on each other evaluation set."""
    from speechkit.report import table

    keys = [s.key for s in task.scores(task.cfg) if s.key in result.metrics]
    names = {s.key: s.name for s in task.scores(task.cfg)}
    scored = [("(this split)", result), *result.eval_sets.items()]
    return ("Other evaluation sets (eval_sets)", table(
        ["set", task.unit, *(names[k] for k in keys)],
        [(name, len(r.rows), *(f"{r.metrics.get(k, float('nan')):.4f}" for k in keys)) for name, r in scored],
        [False, True] + [True] * len(keys)))


def write_results(task, result: EvalResult, rows, run_dir: str, title: str,
                  training_run: Optional[str] = None) -> List[str]:
    """The evaluation's files in `run_dir`: predictions.csv (every clip's file, reference and prediction),
    report.html (the task's report, speechkit/report.py) with the clips it plays (clips/) and, for a classifier,
    per_class.csv, confusion.csv and confusion.png. `rows`: the scored split; `training_run`: the run dir of the model
    evaluated, whose training curves the report shows (copied here, so the page links them relatively). Returns the
    paths."""
    from speechkit.data.audio import audio_ref
    from speechkit.data import AUDIO
    from speechkit.plots import confusion_matrix
    from speechkit.rundir import RunDir

    from speechkit.report import page

    run = RunDir(run_dir)
    files = rows.select_columns([AUDIO])
    ids = [audio_ref(files[r][AUDIO]) for r in result.rows]
    with open(run.predictions, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *(result.predictions[0] if result.predictions else [])])
        w.writerows([clip, *p.values()] for clip, p in zip(ids, result.predictions))
    written = [run.predictions]
    durations = np.asarray(rows.select(result.rows)["num_samples"], dtype=np.float64) / task.sampling_rate \
        if result.rows else np.zeros(0)
    audio, kept = keep_clips(task, result, rows, run, ids, durations)
    if training_run and os.path.isfile(RunDir(training_run).curves) and \
            os.path.abspath(training_run) != os.path.abspath(run_dir):
        shutil.copyfile(RunDir(training_run).curves, run.curves)
    curves = os.path.basename(run.curves) if os.path.isfile(run.curves) else None
    sections = task.report_sections(result, ids, durations, audio=audio, kept=kept)
    if result.eval_sets:  # the same model on the run's other evaluation sets (eval_sets)
        sections.insert(1, eval_sets_section(task, result))
    with open(run.report, "w", encoding="utf-8") as f:
        f.write(page(title, sections, curves))
    written.append(run.report)
    if audio:
        written.append(run.clips)
    per_class = result.tables.get("per_class")
    if per_class:
        with open(run.per_class, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_class[0]))
            w.writeheader()
            w.writerows(per_class)
        written.append(run.per_class)
    matrix = result.tables.get("confusion")
    if matrix:
        labels = [r["label"] for r in per_class]
        with open(run.confusion, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *labels])
            w.writerows([label, *counts] for label, counts in zip(labels, matrix))
        written += [run.confusion, confusion_matrix(labels, matrix, run.confusion_plot)]
    return written
