"""Pictures a person would rather look at than a log: the training curves (`curves.png` in a training run dir), the
confusion matrix of a classifier (`confusion.png`) and the duration histogram of a data set (`durations.png` from
inspect_data.py). PNG files only, no display needed. (Who spoke when is drawn in report.html itself, with the
audio: speechkit/report.py.)"""

from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def training_curves(metrics_path: str, out_path: str, names: Dict[str, str], best_step: int | None = None) -> str:
    """Training loss, learning rate and the eval scores (the task's: {metrics key: name}, e.g. WER and CER; each of
    the other evaluation sets' dashed, in the same colours, with its name) against the optimizer step, read from
    metrics.jsonl, the best evaluation (`best_step`) in the title; written to `out_path` (PNG) through a temporary
    file, so a reader never sees half a picture."""
    plt = pyplot()
    with open(metrics_path) as f:
        records: List[dict] = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    sets: Dict[str, List[dict]] = {}  # eval_sets, by name, in the order they were logged
    for r in records:
        if r["kind"] == "eval_set":
            sets.setdefault(r["eval_set"], []).append(r)
    eval_losses = [r for r in evals if "eval_loss" in r]  # a diarizer scores whole recordings: no loss to log

    fig, (loss_ax, lr_ax, err_ax) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="tab:blue")
    if eval_losses:
        loss_ax.plot([r["step"] for r in eval_losses], [r["eval_loss"] for r in eval_losses], "o-",
                     label="eval loss", color="tab:orange")
    loss_ax.set_ylabel("loss")
    losses = [r["loss"] for r in train] + [r["eval_loss"] for r in eval_losses]
    if losses and all(v > 0 for v in losses):  # CTC losses span decades; a window of only skipped steps logs 0
        loss_ax.set_yscale("log")
    loss_ax.legend()
    lr_ax.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    scores = [k for k in names if evals and k in evals[-1]]
    counts = [k for k in scores if k.startswith("eval_probe")]  # words per clip, not a rate: an axis of their own
    for n, key in enumerate(k for k in scores if k not in counts):
        err_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=names[key], color=f"C{n}")
        for style, (name, records_of_set) in zip(("--", ":", "-.") * 10, sets.items()):
            err_ax.plot([r["step"] for r in records_of_set], [r.get(key, np.nan) for r in records_of_set],
                        "x" + style, label=f"{names[key]} ({name})", color=f"C{n}")
    err_ax.set_ylabel("eval score")
    err_ax.set_ylim(bottom=0)
    err_ax.set_xlabel("optimizer step")
    err_ax.legend(loc="upper left")
    if counts:
        count_ax = err_ax.twinx()
        for key in counts:
            count_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "s--", color="tab:red",
                          label=names[key])
        count_ax.set_ylabel("words per probe clip")
        count_ax.set_ylim(bottom=0)
        count_ax.legend(loc="upper right")
    for ax in (loss_ax, lr_ax, err_ax):
        ax.grid(alpha=0.3)
    best = [r for r in evals if r["step"] == best_step]
    title = ("best eval: " + ", ".join(f"{names[k]} {best[-1][k]:.4f}" for k in scores)
             + f" at step {best_step}") if best else ""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    # What the picture shows, in words (the PNG's Description text, for a screen reader or a program)
    description = (f"Training curves over {len(train)} logged steps and {len(evals)} evaluations: train loss"
                   f"{', eval loss' if eval_losses else ''}; learning rate; eval scores: "
                   f"{', '.join(names[k] for k in scores) or 'none yet'}"
                   + (f"; also on the evaluation sets {', '.join(sets)}" if sets else "")
                   + (f"; {title}" if title else ""))
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=100, metadata={"Description": description})
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


def confusion_figure(labels: List[str], matrix: List[List[int]]):
    plt = pyplot()
    counts = np.asarray(matrix)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 40:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                        color="white" if n > counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"accuracy {np.trace(counts) / max(counts.sum(), 1):.4f} on {counts.sum()} clips")
    fig.tight_layout()
    return fig


def confusion_matrix(labels: List[str], matrix: List[List[int]], path: str) -> str:
    """Rows: the true class, columns: the predicted one; each cell's count written in it."""
    fig = confusion_figure(labels, matrix)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def duration_histogram(durations: Dict[str, np.ndarray], path: str) -> str:
    """Clip durations (seconds) per split, one outline each, on shared bins."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    longest = max((d.max() for d in durations.values() if d.size), default=1.0)
    bins = np.linspace(0, longest, 41)
    for name, d in durations.items():
        ax.hist(d, bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({d.size} clips, {d.sum() / 3600:.2f} h)")
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
