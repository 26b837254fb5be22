"""The run dir: every file and folder a run leaves behind, named once (docs/runs.md, "What a run leaves behind")."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RunDir:
    root: str

    def _at(self, *name: str) -> str:
        return os.path.join(self.root, *name)

    @property
    def config(self) -> str:  # the resolved config, secrets redacted
        return self._at("config.yaml")

    @property
    def log(self) -> str:  # the console log: Hydra names it after the job (train.py)
        return self._at("train.log")

    @property
    def vocab(self) -> str:
        return self._at("vocab.json")

    @property
    def metrics(self) -> str:  # one JSON line per logging window and per evaluation
        return self._at("metrics.jsonl")

    @property
    def curves(self) -> str:  # loss, learning rate and eval scores against the step, redrawn at each evaluation
        return self._at("curves.png")

    @property
    def drop_report(self) -> str:  # every example left out, with its file and reason
        return self._at("drop_report.jsonl")

    @property
    def predictions(self) -> str:  # every clip's reference and prediction (evaluate.py, and a run's final eval)
        return self._at("predictions.csv")

    @property
    def report(self) -> str:  # the evaluation as one self-contained web page (evaluate.py, and a run's final eval)
        return self._at("report.html")

    @property
    def clips(self) -> str:  # the evaluated clips report.html plays (FLAC at the model's rate, worst first, capped)
        return self._at("clips")

    @property
    def per_class(self) -> str:  # classification: precision, recall, F1 and support of every class
        return self._at("per_class.csv")

    @property
    def confusion(self) -> str:  # classification: the confusion matrix, true class by row (CSV)
        return self._at("confusion.csv")

    @property
    def confusion_plot(self) -> str:  # classification: the same, drawn
        return self._at("confusion.png")

    @property
    def durations(self) -> str:  # inspect_data.py: a histogram of clip durations per split
        return self._at("durations.png")

    @property
    def characters(self) -> str:  # inspect_data.py: the character inventory with counts per split
        return self._at("characters.csv")

    @property
    def labels(self) -> str:  # inspect_data.py, task=audio_classification: clips per label and split
        return self._at("labels.csv")

    @property
    def summary(self) -> str:  # inspect_data.py: clips, hours and drops per split
        return self._at("summary.json")

    @property
    def checkpoints(self) -> str:  # step-N/ folders, each a full training state
        return self._at("checkpoints")

    @property
    def best(self) -> str:  # the weights with the best eval score so far
        return self._at("checkpoints", "best")

    @property
    def model(self) -> str:  # the shipped Hugging Face model folder
        return self._at("model")

    def records(self) -> tuple:
        """The small files that describe a run (what a SageMaker job copies to its output)."""
        return (self.config, self.metrics, self.curves, self.drop_report, self.vocab, self.log)
