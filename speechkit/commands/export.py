"""`python export.py model_dir=<run>/model [quantize=int8]`: the model in ONNX (speechkit/onnx_export.py) in
<model_dir>/onnx/, kept only if it scores as the PyTorch model does.

The parity gate: both models score the same split through the task's own evaluation (by default the run's eval
split, from the run's config.yaml); the figures (WER and CER of each, their difference, the largest logit
difference, the transcripts that changed) are printed side by side and written to <model_dir>/onnx/parity.json.
A WER difference above `tolerance` (null: 0.002 for float32, 0.02 for int8) refuses the export: its file is
removed and the run ends with exit 1, naming the difference.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

from speechkit import data, onnx_export as export
from speechkit.config import ConfigError, DatasetConfig, ExportConfig, RunError, check_required
from speechkit.data.samplers import eval_loader
from speechkit.hardware import loader_settings, make_accelerator
from speechkit.models import head_of
from speechkit.rundir import RunDir
from speechkit.tasks import load_model_dir

log = logging.getLogger(__name__)
TOLERANCE = {"none": 0.002, "int8": 0.02}  # absolute WER


def run(raw_cfg: DictConfig) -> dict:
    check_required(raw_cfg)
    cfg: ExportConfig = OmegaConf.to_object(raw_cfg)
    model_dir = os.path.expanduser(cfg.model_dir)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"model_dir: {cfg.model_dir} is not a saved model folder (no config.json); give a run's "
                          "model/ folder")
    dataset, split = _parity_split(cfg, model_dir)
    accelerator = make_accelerator(cfg.hw)
    task, model = load_model_dir(model_dir)
    export.check_exportable(head_of(model.config))
    model.eval()

    # 1. The graph, float32; int8 made from it.
    folder = os.path.join(model_dir, export.FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = export.export(model, os.path.join(folder, export.FILES["none"]))
    if cfg.quantize.value == "int8":
        path = export.quantize_int8(path, os.path.join(folder, export.FILES["int8"]))
    log.info("Exported %s (%.1f MB)", path, os.path.getsize(path) / 2**20)

    # 2. The parity gate: the same split, batches and scoring for both.
    report = data.DropReport()
    rows = data.load_splits(dataset, {split: False}, task.sampling_rate, report, task.target,
                            task.family.receptive_field(model.config, task.sampling_rate),
                            task.family.longest_clip(model.config, task.sampling_rate))[split]
    rows = task.check_eval_rows(rows, split, report)
    eval_set = task.dataset(rows, training=False)
    loader = eval_loader(eval_set, task.collator(False), cfg.batch_size, **loader_settings(accelerator))
    exported = export.OnnxModel(path, model)
    with torch.no_grad():
        reference = task.evaluate(model, loader, eval_set, accelerator)
        result = task.evaluate(exported, loader, eval_set, accelerator)
        largest = _largest_logit_difference(task, model, exported, loader)
    figures = _figures(cfg, path, model_dir, dataset, split, reference, result, largest)
    with open(os.path.join(folder, export.PARITY), "w") as f:
        json.dump(figures, f, indent=1)
    print(_table(figures), flush=True)
    if not figures["passed"]:
        os.remove(path)
        raise RunError(f"the export differs from the PyTorch model by {figures['wer_difference']:.4f} WER on "
                       f"{dataset.name}/{split}, above tolerance={figures['tolerance']}: {path} removed (the figures "
                       f"are in {os.path.join(folder, export.PARITY)})")
    return figures


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
    """The largest absolute logit difference over the frames each clip really has."""
    largest = 0.0
    for batch in loader:
        inputs = task.collator().model_inputs(batch)
        a, b = model(**inputs).logits, exported(**inputs).logits
        frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        for i, n in enumerate(frames.tolist()):
            largest = max(largest, float((a[i, :n] - b[i, :n]).abs().max()))
    return largest


def _figures(cfg, path, model_dir, dataset, split, reference, result, largest) -> dict:
    tolerance = cfg.tolerance if cfg.tolerance is not None else TOLERANCE[cfg.quantize.value]
    changed = sum(p["hypothesis"] != q["hypothesis"] for p, q in zip(reference.predictions, result.predictions))
    difference = abs(result.metrics["eval_wer"] - reference.metrics["eval_wer"])
    weights = os.path.join(model_dir, "model.safetensors")
    return {"format": cfg.format.value, "quantize": cfg.quantize.value, "file": path,
            "size_mb": round(os.path.getsize(path) / 2**20, 2),
            "pytorch_size_mb": round(os.path.getsize(weights) / 2**20, 2) if os.path.isfile(weights) else None,
            "dataset": dataset.name, "split": split, "utterances": len(result.rows),
            "pytorch": {"wer": reference.metrics["eval_wer"], "cer": reference.metrics["eval_cer"]},
            "exported": {"wer": result.metrics["eval_wer"], "cer": result.metrics["eval_cer"]},
            "wer_difference": difference, "tolerance": tolerance, "max_logit_difference": largest,
            "changed_transcripts": changed, "passed": difference <= tolerance}


def _table(f: dict) -> str:
    kind = "ONNX" + (" int8" if f["quantize"] == "int8" else "")
    return (f"Parity on {f['dataset']}/{f['split']} ({f['utterances']} utterances):\n"
            f"| | PyTorch | {kind} |\n|---|---|---|\n"
            f"| WER | {f['pytorch']['wer']:.4f} | {f['exported']['wer']:.4f} |\n"
            f"| CER | {f['pytorch']['cer']:.4f} | {f['exported']['cer']:.4f} |\n"
            f"| size | {f['pytorch_size_mb']} MB | {f['size_mb']} MB |\n"
            f"WER difference {f['wer_difference']:.4f} (tolerance {f['tolerance']}), largest logit difference "
            f"{f['max_logit_difference']:.2e}, {f['changed_transcripts']} transcript(s) changed: "
            + ("kept" if f["passed"] else "REFUSED"))
