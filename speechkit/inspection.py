"""A data set as training would see it, before training (inspect_data.py).

Every split of the source goes through the same checking pass as training (so its decoded audio lands in the cache
a later run reads): clips and hours per split, durations, the task's inventory (its `inventory`: the characters of
the normalized text for speech recognition, the clips per label for classification, the recordings by number of
speakers for diarization), and what the checking pass drops, written (summary.json, characters.csv or labels.csv,
drop_report.jsonl) and drawn (durations.png) by `inspect_dataset`, and put in words by `describe`.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict

import numpy as np

from speechkit import data
from speechkit.config import InspectConfig
from speechkit.plots import duration_histogram
from speechkit.rundir import RunDir
from speechkit.tasks import task_class


@dataclass
class Inspection:
    """What inspect_dataset found: the summary (summary.json), each split's inventory, and where it wrote them."""
    summary: dict
    inventory: Dict[str, Counter]  # per split: its characters, or its clips per label
    labelled: bool  # labels (classes, speakers per recording), not characters
    train_split: str
    run: RunDir


def inspect_dataset(cfg: InspectConfig) -> Inspection:
    """Every split of cfg.dataset through the checking pass; the summary, inventories, drop report and histogram
    written in cfg.run_dir."""
    ds, rate, run = cfg.dataset, cfg.sampling_rate, RunDir(cfg.run_dir)
    os.makedirs(run.root, exist_ok=True)
    report = data.DropReport()
    task = task_class(cfg.task.name)(cfg.task, dataset=ds)
    labelled = task.inventory_kind == "labels"  # labels (classes, speakers per recording), not characters
    sources = {name: data.whole(rows) for name, rows in data.load_source(ds, task.target).items()}  # streamed or not
    splits = {name: data.check_split(rows, name, ds, rate, name == ds.train_split, report)
              for name, rows in sources.items()}

    durations = {name: np.asarray(rows["num_samples"], dtype=np.float64) / rate for name, rows in splits.items()}
    chars = {name: task.inventory(rows) for name, rows in splits.items()}
    summary = {"dataset": ds.name, "sampling_rate": rate, "splits": {}}
    for name in splits:
        d = durations[name]
        summary["splits"][name] = {
            "clips": int(d.size), "hours": float(d.sum() / 3600), "dropped": len(sources[name]) - int(d.size),
            "drop_reasons": dict(report.counts(name)),
            "duration_s": {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())} if d.size else None,
            ("labels" if labelled else "characters"): len(chars[name]),
        }
    train_chars = chars.get(ds.train_split, Counter())
    unseen = {name: sorted(set(c) - set(train_chars)) for name, c in chars.items() if name != ds.train_split}
    summary["labels_not_in_training" if labelled else "characters_not_in_training_text"] = \
        {k: v for k, v in unseen.items() if v}

    with open(run.summary, "w") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    _write_inventory(chars, run.labels if labelled else run.characters, labelled)
    report.write(run.drop_report)
    duration_histogram(durations, run.durations)
    return Inspection(summary, chars, labelled, ds.train_split, run)


def describe(found: Inspection, top: int) -> str:
    """The splits, the training split's `top` most frequent characters or labels, and what the other splits have
    that it lacks, as inspect_data.py prints them."""
    words = _describe_labels if found.labelled else _describe
    return words(found.summary, found.inventory, found.train_split, top, found.run)


def _write_inventory(chars: Dict[str, Counter], path: str, labelled: bool = False) -> None:
    names = list(chars)
    everything = sum(chars.values(), Counter())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", *names] if labelled else ["character", "codepoint", *names])
        for ch, _ in everything.most_common():
            w.writerow([ch, *(chars[n][ch] for n in names)] if labelled
                       else [ch, f"U+{ord(ch):04X}", *(chars[n][ch] for n in names)])


def _splits_table(summary: dict) -> list:
    lines = [f"Data set '{summary['dataset']}' at {summary['sampling_rate']} Hz", "",
             f"{'split':<14}{'clips':>8}{'hours':>9}{'min s':>8}{'mean s':>8}{'max s':>8}{'dropped':>9}  reasons"]
    for name, s in summary["splits"].items():
        d = s["duration_s"] or {"min": 0, "mean": 0, "max": 0}
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s["drop_reasons"].items())) or "-"
        lines.append(f"{name:<14}{s['clips']:>8}{s['hours']:>9.3f}{d['min']:>8.2f}{d['mean']:>8.2f}{d['max']:>8.2f}"
                     f"{s['dropped']:>9}  {reasons}")
    return lines


def _describe_labels(summary: dict, labels: Dict[str, Counter], train_split: str, top: int, run: RunDir) -> str:
    lines = _splits_table(summary)
    inventory = labels.get(train_split) or sum(labels.values(), Counter())
    lines += ["", f"Labels of '{train_split}' ({len(inventory)}; clips each, most frequent first):"]
    shown = [f"{label}:{n}" for label, n in inventory.most_common(top)]
    lines += ["  " + " ".join(shown[i:i + 8]) for i in range(0, len(shown), 8)]
    for name, missing in summary["labels_not_in_training"].items():
        lines.append(f"  in '{name}' but never in '{train_split}' (a model cannot learn them): {', '.join(missing)}")
    lines += ["", f"Written: {run.summary}, {run.labels}, {run.drop_report}, {run.durations}"]
    return "\n".join(lines)


def _describe(summary: dict, chars: Dict[str, Counter], train_split: str, top: int, run: RunDir) -> str:
    lines = _splits_table(summary)
    inventory = chars.get(train_split) or sum(chars.values(), Counter())
    lines += ["", f"Characters of the normalized '{train_split}' text ({len(inventory)}; most frequent first):"]
    shown = [f"{ch!r}:{n}" if ch != " " else f"' ':{n}" for ch, n in inventory.most_common(top)]
    lines += ["  " + " ".join(shown[i:i + 10]) for i in range(0, len(shown), 10)]
    for name, missing in summary["characters_not_in_training_text"].items():
        lines.append(f"  in '{name}' but never in '{train_split}' (a model cannot learn them): {' '.join(missing)}")
    lines += ["", f"Written: {run.summary}, {run.characters}, {run.drop_report}, {run.durations}"]
    return "\n".join(lines)
