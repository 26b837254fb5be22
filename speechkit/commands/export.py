"""`python export.py model_dir=<run>/model [quantize=int8]`: the model in ONNX (speechkit/onnx_export.py) in
<model_dir>/onnx/, kept only if it scores as the PyTorch model does (the gate: speechkit/parity.py).

The parity gate: both models score the same split through the task's own evaluation (by default the run's eval
split, from the run's config.yaml); the figures (the task's scores for each: WER and CER, accuracy and macro-F1 or
mAP, DER; the difference of the first, the largest logit difference, the predictions that changed) are printed side
by side and written to <model_dir>/onnx/parity.json, one record per exported file, with the hashes of the file and
of the weights it was made from (what the handler checks before it serves it). A difference above `tolerance`
(null: 0.002 absolute for float32, 0.02 for int8) refuses the export: its file is removed and the run ends with
exit 1, naming the difference.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from speechkit import parity
from speechkit.config import ConfigError, ExportConfig, RunError, check_required
from speechkit.inference.onnx import PARITY_FILE


def run(raw_cfg: DictConfig) -> dict:
    check_required(raw_cfg)
    cfg: ExportConfig = OmegaConf.to_object(raw_cfg)
    model_dir = os.path.expanduser(cfg.model_dir)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"model_dir: {cfg.model_dir} is not a saved model folder (no config.json); give a run's "
                          "model/ folder")
    figures = parity.gate(cfg, model_dir)
    print(parity.table(figures), flush=True)
    if not figures["passed"]:
        raise RunError(f"the export differs from the PyTorch model by {figures['difference']:.4f} "
                       f"{figures['metric']} on {figures['dataset']}/{figures['split']}, above tolerance="
                       f"{figures['tolerance']}: {figures['file']} removed (the figures are in "
                       f"{os.path.join(os.path.dirname(figures['file']), PARITY_FILE)})")
    return figures
