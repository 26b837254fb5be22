"""A saved model scored on one split of a data set (evaluate.py): the task is the one whose head the model has
(speechkit/tasks/__init__.py: load_model_dir), run by PyTorch or by its checked ONNX export (inference.runtime), its
predictions, report and drop report written in the run dir (speechkit/tasks/scoring.py: write_results)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List

from speechkit import data
from speechkit.config import EvaluateConfig
from speechkit.data.samplers import eval_loader
from speechkit.hardware import loader_settings, make_accelerator
from speechkit.onnx_export import for_runtime
from speechkit.rundir import RunDir
from speechkit.tasks import load_model_dir
from speechkit.tasks.scoring import EvalResult, write_results
from speechkit.validation import saved_model_dir


@dataclass
class Evaluation:
    """What evaluate_saved_model found: the task and its result; on the main process (the one that writes and says
    it), the files written and the clips the checking pass dropped, by reason."""
    task: object
    result: EvalResult
    main_process: bool
    written: List[str] = field(default_factory=list)
    dropped: Dict[str, int] = field(default_factory=dict)


def evaluate_saved_model(cfg: EvaluateConfig) -> Evaluation:
    """Score cfg.model_dir on cfg.dataset's cfg.split; the main process writes the results in cfg.run_dir."""
    model_dir = saved_model_dir(cfg.model_dir)
    os.makedirs(cfg.run_dir, exist_ok=True)
    accelerator = make_accelerator(cfg.hw)
    task, model = load_model_dir(model_dir, multi_label=cfg.multi_label, collar_s=cfg.collar_s,
                                 skip_overlap=cfg.skip_overlap, dataset=cfg.dataset,
                                 whisper_normalizer=cfg.whisper_normalizer, hallucination_probe=cfg.hallucination_probe)
    runtime = cfg.inference.runtime.value
    model = for_runtime(model, model_dir, runtime)  # the ONNX export in its place, checked before any data is read

    report = data.DropReport()
    with accelerator.main_process_first():
        rows = data.load_splits(cfg.dataset, {cfg.split: False}, task.sampling_rate, report, task.target,
                                task.family.receptive_field(model.config, task.sampling_rate),
                                task.family.longest_clip(model.config, task.sampling_rate))[cfg.split]
    rows = task.check_eval_rows(rows, cfg.split, report)
    dataset = task.dataset(rows, training=False)
    loader = eval_loader(dataset, task.collator(False), cfg.batch_size, **loader_settings(accelerator))
    if runtime == "torch":
        model, loader = accelerator.prepare(model, loader)
    else:  # onnxruntime on the CPU: nothing of the model for accelerate to place
        loader = accelerator.prepare(loader)
    result = task.evaluate(model, loader, dataset, accelerator)

    if not accelerator.is_main_process:
        return Evaluation(task, result, main_process=False)
    written = write_results(task, result, rows, cfg.run_dir, f"{cfg.dataset.name}/{cfg.split}: {model_dir}"
                            + (f" ({runtime})" if runtime != "torch" else ""),
                            training_run=os.path.dirname(os.path.abspath(model_dir)) if os.path.isdir(model_dir)
                            else None)  # a run's model/: its run dir has the training curves
    report.write(RunDir(cfg.run_dir).drop_report)
    return Evaluation(task, result, main_process=True, written=list(written), dropped=dict(report.counts()))
