"""The parity gate (export.py): a saved model exported to ONNX (speechkit/onnx_export.py) in <model_dir>/onnx/, kept
only if it scores as the PyTorch model does.

Both models score the same split through the task's own evaluation (by default the run's eval split, from the run's
config.yaml); the figures (the task's scores for each: WER and CER, accuracy and macro-F1 or mAP, DER; the
difference of the first, the largest logit difference, the predictions that changed) are written to
<model_dir>/onnx/parity.json, one record per exported file, with the hashes of the file (and of a generating model's
other graphs) and of the weights it was made from (what the handler checks before it serves it). A difference above
`tolerance` (null: 0.002 absolute for float32, 0.02 for int8) refuses the export: its files are removed.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from omegaconf import OmegaConf

from speechkit import data, onnx_export as export
from speechkit.config import ConfigError, DatasetConfig, ExportConfig
from speechkit.data.samplers import eval_loader
from speechkit.hardware import loader_settings, make_accelerator
from speechkit.rundir import RunDir
from speechkit.tasks import load_model_dir

log = logging.getLogger(__name__)
# the largest absolute difference of the task's first score (WER, accuracy or mAP, DER) an export may make
TOLERANCE = {"none": 0.002, "int8": 0.02}


def gate(cfg: ExportConfig, model_dir: str) -> dict:
    """The model at `model_dir` exported as `cfg` says and scored beside the PyTorch model; its figures (`passed`:
    kept), recorded in parity.json. A refused export's files are removed."""
    dataset, split = _parity_split(cfg, model_dir)
    accelerator = make_accelerator(cfg.hw)
    task, model = load_model_dir(model_dir)
    export.check_exportable(model.config)
    model.eval()

    # 1. The split the gate scores (read first: its clips are the exporter's example too).
    report = data.DropReport()
    rows = data.load_splits(dataset, {split: False}, task.sampling_rate, report, task.target,
                            task.family.receptive_field(model.config, task.sampling_rate),
                            task.family.longest_clip(model.config, task.sampling_rate))[split]
    rows = task.check_eval_rows(rows, split, report)
    eval_set = task.dataset(rows, training=False)
    collator = task.collator(False)
    loader = eval_loader(eval_set, collator, cfg.batch_size, **loader_settings(accelerator))

    # 2. The graph, float32; int8 made from it.
    folder = os.path.join(model_dir, export.FOLDER)
    os.makedirs(folder, exist_ok=True)
    example = {k: v for k, v in collator.model_inputs(collator([eval_set[i % len(eval_set)] for i in range(2)])).items()
               if k != "labels"}  # the inputs alone (a CTC model is given its labels for its own loss)
    path = export.export(model, example, os.path.join(folder, export.FILES["none"]), _lengths(task, model))
    if cfg.quantize.value == "int8":
        path = export.quantize_int8(path, os.path.join(folder, export.FILES["int8"]), model)
    log.info("Exported %s (%.1f MB)%s", path, os.path.getsize(path) / 2**20,
             f" with {', '.join(export.companion_files(path))}" if export.generates(model) else "")

    # 3. The parity gate: the same split, batches and scoring for both.
    exported = export.exported_model(export.graph_files(model, path), model, keep_reference=True)
    with torch.no_grad():
        reference = task.evaluate(model, loader, eval_set, accelerator)
        result = task.evaluate(exported, loader, eval_set, accelerator)
        largest = _largest_logit_difference(task, model, exported, loader)
    figures = _figures(cfg, task, export.graph_files(model, path), model_dir, dataset, split, reference, result,
                       largest)
    _record(folder, os.path.basename(path), figures)
    if not figures["passed"]:  # refused: the files go, the figures stay in parity.json
        for file in export.graph_files(model, path):
            os.remove(file)
    return figures


def _lengths(task, model):
    """The length axis's bounds, as the model family states them (None where its input is a fixed window: AST)."""
    if task.inputs.window:
        return None
    return task.family.input_lengths(model.config, task.sampling_rate, export.LONGEST_S)


def _record(folder: str, name: str, figures: dict) -> None:
    """parity.json keeps one record per exported file (model.onnx, model.int8.onnx); this one replaces its own."""
    path = os.path.join(folder, export.PARITY)
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError):
        records = {}
    if isinstance(records, dict) and "passed" in records:  # the first layout: one record, of the file it names
        records = {os.path.basename(str(records.get("file", ""))): records} if records.get("file") else {}
    records = records if isinstance(records, dict) else {}
    records[name] = figures
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=1)
    os.replace(path + ".tmp", path)


def _parity_split(cfg: ExportConfig, model_dir: str):
    """The data set and split the gate scores: as given, or the run's own (config.yaml beside model/)."""
    if cfg.dataset is not None:
        return cfg.dataset, cfg.split or cfg.dataset.eval_split
    run_config = RunDir(os.path.dirname(os.path.abspath(model_dir))).config
    if not os.path.isfile(run_config):
        raise ConfigError(f"dataset: none given, and {run_config} (the run's config, which names its eval split) is "
                          "not there: pass dataset=<name> split=<name> for the parity gate")
    saved = OmegaConf.load(run_config).dataset
    dataset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), saved))
    return dataset, cfg.split or dataset.eval_split


def _largest_logit_difference(task, model, exported, loader) -> float:
    """The largest absolute logit difference, over the frames each clip really has where the logits are per frame."""
    largest = 0.0
    per_frame = not export.generates(model)  # a CTC or frame model's logits (a generating model's: per token)
    for batch in loader:
        inputs = task.collator().model_inputs(batch)
        a, b = model(**inputs).logits, exported(**inputs).logits
        if per_frame and a.dim() == 3 and "attention_mask" in batch:  # the frames each clip has, as its family says
            frames = task.family.output_lengths(task.config, batch["attention_mask"].sum(-1))
            for i, n in enumerate(frames.tolist()):
                largest = max(largest, float((a[i, :n] - b[i, :n]).abs().max()))
        else:
            largest = max(largest, float((a - b).abs().max()))
    return largest


def _figures(cfg, task, files, model_dir, dataset, split, reference, result, largest) -> dict:
    """Both models' scores (the task's, the first of which the tolerance is on), the predictions that changed,
    sizes, and the hashes the handler checks before it serves the file."""
    tolerance = cfg.tolerance if cfg.tolerance is not None else TOLERANCE[cfg.quantize.value]
    scores = task.scores(task.cfg)
    first = scores[0]
    changed = sum(p != q for p, q in zip(reference.predictions, result.predictions))
    difference = float(abs(result.metrics[first.key] - reference.metrics[first.key]))
    weights = os.path.join(model_dir, export.WEIGHTS)
    path, companions = files[-1], files[:-1]  # a Whisper export's other graphs before model.onnx
    return {"format": cfg.format.value, "quantize": cfg.quantize.value, "file": path, "sha256": export.sha256(path),
            **({"companion_sha256": {os.path.basename(f): export.sha256(f) for f in companions}} if companions else {}),
            "weights_sha256": export.sha256(weights) if os.path.isfile(weights) else None,
            "size_mb": round(sum(os.path.getsize(f) for f in files) / 2**20, 2),
            "pytorch_size_mb": round(os.path.getsize(weights) / 2**20, 2) if os.path.isfile(weights) else None,
            "dataset": dataset.name, "split": split, "utterances": len(result.rows), "unit": task.unit,
            "scores": {s.key: s.name for s in scores if s.key in reference.metrics},
            "pytorch": {s.key: reference.metrics[s.key] for s in scores if s.key in reference.metrics},
            "exported": {s.key: result.metrics[s.key] for s in scores if s.key in result.metrics},
            "metric": first.name, "difference": difference, "tolerance": tolerance, "max_logit_difference": largest,
            "changed_predictions": changed, "passed": difference <= tolerance}


def table(f: dict) -> str:
    """The figures side by side, as export.py prints them."""
    kind = "ONNX" + (" int8" if f["quantize"] == "int8" else "")
    lines = [f"| {name} | {f['pytorch'][key]:.4f} | {f['exported'][key]:.4f} |" for key, name in f["scores"].items()]
    return (f"Parity on {f['dataset']}/{f['split']} ({f['utterances']} {f['unit']}):\n"
            f"| | PyTorch | {kind} |\n|---|---|---|\n" + "\n".join(lines) + "\n"
            f"| size | {f['pytorch_size_mb']} MB | {f['size_mb']} MB |\n"
            f"{f['metric']} difference {f['difference']:.4f} (tolerance {f['tolerance']}), largest logit difference "
            f"{f['max_logit_difference']:.2e}, {f['changed_predictions']} prediction(s) changed: "
            + ("kept" if f["passed"] else "REFUSED"))
