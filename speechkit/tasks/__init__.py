"""Tasks (conf/task): what a row's target is, which head the model gets, how batches are collated, how the loss and
the predictions are computed and scored, which result is best, and what ships beside the weights in model/.

- base.py            the contract every task keeps (Task), and what they share (Collator, Score)
- asr.py             speech recognition, by the model's head kind (speechkit/kinds/: CTC frames, generation)
- classification.py  audio classification: one class or several per clip
- diarization.py     who spoke when: speaker activity per frame
- scoring.py         the evaluation pass every task shares, and the files an evaluation writes

The registry below is the one list of tasks: each one's config schema (speechkit/config.py, which conf/task/<name>.yaml
fills in), the class that does it (imported only when it is used) and the model heads it can train. The trainer and
the commands talk to a task only through the contract, and find it here by name, or by the head a saved model has.
A new task is one module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Tuple

from speechkit.config import AsrConfig, ClassificationConfig, ConfigError, DiarizationConfig


@dataclass(frozen=True)
class Registered:
    schema: type  # its config schema: conf/task/<name>.yaml composes onto it
    implementation: str  # "module:Class"
    heads: Tuple[str, ...]  # the model heads it can train, in order of preference (speechkit/models/)


TASKS = {
    "asr": Registered(AsrConfig, "speechkit.tasks.asr:SpeechRecognition", ("ctc", "seq2seq")),
    "audio_classification": Registered(ClassificationConfig, "speechkit.tasks.classification:AudioClassification",
                                       ("classification",)),
    "diarization": Registered(DiarizationConfig, "speechkit.tasks.diarization:Diarization", ("frames",)),
}


def task_class(name: str):
    """The class of the task named `name` (a key of TASKS)."""
    if name not in TASKS:
        raise ConfigError(f"task={name}: no such task (tasks: {', '.join(TASKS)})")
    module, cls = TASKS[name].implementation.split(":")
    return getattr(importlib.import_module(module), cls)


def make_task(cfg):
    """The task a training config asks for (cfg.task.name), with the run's data set and model settings."""
    return task_class(cfg.task.name)(cfg.task, dataset=cfg.dataset, model=cfg.model)


def load_model_dir(model_dir: str, **options):
    """(task, model) of a saved model (a folder, or a Hub id): the task is the one whose head the model has (a CTC
    head: speech recognition, a classification head: audio classification, a frame-level head: diarization).
    `options`: evaluate.py's overrides of the model's own task settings (multi_label, collar_s, skip_overlap)."""
    from speechkit.models import load

    model, head = load(model_dir)
    name = next(name for name, entry in TASKS.items() if head in entry.heads)
    return task_class(name).restore(model, model_dir, options), model
