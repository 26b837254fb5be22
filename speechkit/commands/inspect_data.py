"""`python inspect_data.py`: a data set as training would see it, before training.

Every split of the source goes through the same checking pass as training (so its decoded audio lands in the cache
a later run reads): clips and hours per split, durations, the task's inventory (its `inventory`: the characters of
the normalized text for speech recognition, the clips per label for classification, the recordings by number of
speakers for diarization), and what the checking pass drops, printed, written (summary.json, characters.csv or
labels.csv, drop_report.jsonl) and drawn (durations.png): speechkit/inspection.py.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from speechkit import inspection
from speechkit.config import InspectConfig, check_required


def run(raw_cfg: DictConfig) -> dict:
    check_required(raw_cfg)
    cfg: InspectConfig = OmegaConf.to_object(raw_cfg)
    found = inspection.inspect_dataset(cfg)
    print(inspection.describe(found, cfg.top_chars), flush=True)
    return found.summary
