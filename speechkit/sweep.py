"""Hydra callbacks (registered in conf/hydra/default.yaml): secrets redacted from Hydra's own copies of the config
(RedactHydraFiles), and the sweep summary.

The sweep summary ends every multirun with one line per job: the overrides that vary between jobs, the job's
objective (what train.py's main returns and optuna minimises: the shipped model's eval WER, or 1 - accuracy (1 - mAP)
for a classifier) and its run dir. It works with any launcher and sweeper (basic, joblib, submitit, optuna) because
it only uses Hydra's own hooks:

- on_job_end runs inside the job's process (a joblib worker, a SLURM node...) and writes `job_result.json` into
  the job's run dir: the only place every launcher has in common;
- on_multirun_end runs once in the process that started the sweep, after every job, and gathers those files into
  `summary.tsv` and `summary.jsonl` in the sweep dir, printing the table and where it was written.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from speechkit.config import redact_override, redact_text

log = logging.getLogger(__name__)
RESULT_FILE = "job_result.json"


def _is_multirun(config: DictConfig) -> bool:
    return config.hydra.mode == RunMode.MULTIRUN


class RedactHydraFiles(Callback):
    """Hydra writes the run's config and the overrides as typed into <run dir>/.hydra/ (config.yaml, hydra.yaml,
    overrides.yaml), then calls on_job_start: which rewrites them with every secret redacted, by key name and by
    shape (speechkit.config.redact_text), as speechkit's own config.yaml is written."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:
            return
        folder = Path(config.hydra.runtime.output_dir) / subdir
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            path = folder / name
            if path.is_file():
                text = path.read_text()
                clean = redact_text(text)
                if clean != text:
                    tmp = path.with_name(f".{name}.tmp")
                    tmp.write_text(clean)
                    os.replace(tmp, path)


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        run_dir = config.hydra.runtime.output_dir
        result: Dict[str, Any] = {"job": int(config.hydra.job.num),
                                  "overrides": [redact_override(o) for o in job_return.overrides or []],
                                  "run_dir": run_dir, "status": job_return.status.name.lower(), "objective": None}
        if job_return.status == JobStatus.COMPLETED:
            value = job_return._return_value  # the property re-raises a failed job's error; this one did not fail
            result["objective"] = float(value) if isinstance(value, (int, float)) else None
        else:
            result["error"] = redact_text(repr(job_return._return_value))
        with open(os.path.join(run_dir, RESULT_FILE), "w") as f:
            json.dump(result, f)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = collect(sweep_dir)
        if not results:
            return
        (sweep_dir / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        lines = format_summary(results)
        (sweep_dir / "summary.tsv").write_text("\n".join(lines) + "\n")
        print("\nSweep summary (" + str(len(results)) + " jobs):\n" + "\n".join(lines)
              + f"\nSummary written to {sweep_dir / 'summary.tsv'} (and summary.jsonl)", flush=True)


def collect(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Every job's result under the sweep dir, by job number."""
    found = [json.loads(p.read_text()) for p in sweep_dir.glob(f"**/{RESULT_FILE}")]
    return sorted(found, key=lambda r: r["job"])


def varying_overrides(results: List[Dict[str, Any]]) -> List[List[str]]:
    """Each job's overrides less those shared by every job of the sweep (those are the command line's, not the
    sweep's); a sweep of one job keeps them all."""
    if len(results) < 2:
        return [r["overrides"] for r in results]
    shared = set.intersection(*(set(r["overrides"]) for r in results))
    return [[o for o in r["overrides"] if o not in shared] for r in results]


def format_summary(results: List[Dict[str, Any]]) -> List[str]:
    """Tab-separated: job, overrides, objective (eval WER, or 1 - accuracy), run dir; a header first."""
    lines = ["job\toverrides\tobjective\trun_dir"]
    for r, overrides in zip(results, varying_overrides(results)):
        value = r["objective"]
        shown = f"{value:.4f}" if value is not None and math.isfinite(value) else r["status"]
        lines.append(f"{r['job']}\t{' '.join(overrides)}\t{shown}\t{r['run_dir']}")
    return lines
