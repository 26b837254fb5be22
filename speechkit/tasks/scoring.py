"""The evaluation pass every task shares: each clip of a loader scored once across all processes, its prediction
gathered by row; the task turns the predictions into metrics (speechkit/tasks/)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

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


def write_results(task, result: EvalResult, rows, run_dir: str, title: str) -> List[str]:
    """The evaluation's files in `run_dir`: predictions.csv (every clip's file, reference and prediction),
    report.html (the task's report, speechkit/report.py) and, for a classifier, per_class.csv, confusion.csv and
    confusion.png. `rows`: the scored split. Returns the paths."""
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
    sections = task.report_sections(result, ids, durations)
    if result.eval_sets:  # the same model on the run's other evaluation sets (eval_sets)
        from speechkit.report import table

        keys = [s.key for s in task.scores(task.cfg) if s.key in result.metrics]
        names = {s.key: s.name for s in task.scores(task.cfg)}
        rows_of = [("(this split)", len(result.rows), *(result.metrics[k] for k in keys))]
        rows_of += [(name, len(r.rows), *(r.metrics.get(k, float("nan")) for k in keys))
                    for name, r in result.eval_sets.items()]
        sections.insert(1, ("Other evaluation sets (eval_sets)", table(
            ["set", task.unit, *(names[k] for k in keys)],
            [(name, n, *(f"{v:.4f}" for v in values)) for name, n, *values in rows_of],
            [False, True] + [True] * len(keys))))
    with open(run.report, "w", encoding="utf-8") as f:
        f.write(page(title, sections))
    written.append(run.report)
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
