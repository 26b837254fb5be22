"""The task contract: what the trainer, the commands, the model card, inspection and the SageMaker launcher ask of a
task, as one base class. A task (speechkit/tasks/<name>.py) states its facts once, as class attributes and the two
class methods below, and fills in the methods the base leaves open; the base holds what every task shares: building
the model through its family (speechkit/models/), loading a saved one, the collator, the forward pass, the torch
dataset and saving the feature extractor.

Facts (class attributes)
  name, target, unit      the task's name (conf/task), the data column it learns from (speechkit/data/columns.py),
                          what a clip is called in its messages ("utterances", "clips", "recordings")
  pipeline                the transformers pipeline / Hub task tag of its models
  card_kind, card_usage   the model card's wording: what the model is, and how to use it (model/README.md)
  inventory_kind          what inspect_data.py counts: "characters" (of the transcripts) or "labels"
  heads                   the model heads it can train (speechkit/tasks/__init__.py's registry says them)
  scores(cfg)             its metrics, each with its name, Hub type and direction (the first ranks checkpoints)
  extras(cfg)             the pip extras it needs beyond speechkit's core (a SageMaker job installs them)

Training:    fit_targets, describe_targets, head_config, build_model (-> prepare), dataset (-> targets), target_of,
             collator (-> batch_targets), forward (-> loss), evaluate, after_training, save, report_sections,
             report_clips, examples
A saved model:  from_model_dir (-> restore), check_eval_rows
Inspection:  inventory
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from speechkit.models import ModelInputs, build_model, family_of, load, model_config as checked_model_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """One metric of a task's evaluation, as metrics.jsonl, the log line and the model card name it."""

    key: str  # as logged: eval_wer
    name: str  # as people read it: WER
    hub_type: Optional[str]  # the model card's model-index metric type (wer); None: not a Hub metric
    lower_is_better: bool


class Collator:
    """Items of the task's dataset (or of a stream) to a batch: items whose audio vanished since start-up dropped, the
    clips padded into the model's input (the family's ModelInputs), each item's row kept as `index`, and the targets
    stacked by the task's `targets(items, batch) -> dict` when the items have labels."""

    def __init__(self, inputs: ModelInputs, targets: Callable[[List[dict], dict], dict], labels_to_model: bool):
        self.inputs, self.targets, self.labels_to_model = inputs, targets, labels_to_model

    def __call__(self, items: List[Optional[dict]]) -> Optional[dict]:
        import torch

        items = [x for x in items if x is not None]
        if not items:
            return None
        batch = self.inputs([x["input_values"] for x in items])
        if "draw" in items[0]:  # a training batch: SpecAugment where the family masks its input
            self.inputs.mask(batch, [x["draw"] for x in items])
        batch["index"] = torch.tensor([x["index"] for x in items])
        if "labels" in items[0]:
            batch.update(self.targets(items, batch))
        return batch

    def model_inputs(self, batch: dict) -> dict:
        """What goes into the model's forward: the batch without bookkeeping, the mask only where it belongs, the
        labels where the model computes its own loss (CTC)."""
        inputs = self.inputs.model_inputs(batch)
        if self.labels_to_model and "labels" in batch:
            inputs["labels"] = batch["labels"]
        return inputs


class Task:
    name: str = ""
    target: str = ""
    unit: str = "clips"
    pipeline: str = ""
    card_kind: str = ""
    card_usage: str = ""
    inventory_kind: str = "labels"
    labels_to_model: bool = False  # the model computes its loss from `labels` itself (CTC); else forward's loss()
    crop: Optional[int] = None  # training clips longer than this many samples are cut to a random window of it

    def __init__(self, cfg, dataset=None, model=None):
        """`cfg`: the task's schema (speechkit/config.py); `dataset`, `model`: the run's, when training. Once a model
        is bound (build_model, restore): `config` is its transformers config, `family` its family, `inputs` what
        turns clips into its input."""
        self.cfg, self.dataset_cfg, self.model_cfg = cfg, dataset, model
        self.family = self.config = self.feature_extractor = self.inputs = self.specaugment = None
        self._collator: Optional[Collator] = None
        self._bound: Optional[tuple] = None  # (config, head) once model_config has read them

    @property
    def heads(self) -> Tuple[str, ...]:
        from speechkit.tasks import TASKS

        return TASKS[self.name].heads

    @classmethod
    def scores(cls, cfg) -> List[Score]:
        raise NotImplementedError

    @classmethod
    def extras(cls, cfg) -> List[str]:
        return []

    # ---------------------------------------------------------------------------- training: targets and model
    def fit_targets(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The targets learnt from the training split (a vocab, a label set), checked against both splits; returns
        the (train, eval) rows left."""
        raise NotImplementedError

    def describe_targets(self) -> str:
        raise NotImplementedError

    def head_config(self) -> dict:
        """The new head's settings (its size, labels ...), set on the model's config."""
        return {}

    def model_config(self, model_cfg):
        """The model's config (no weights) and the head it gets: refused before any data when it has none. The
        model's family is bound here, once for the run (`family`)."""
        if self._bound is None:
            config, head, self.family = checked_model_config(model_cfg, self.heads, self.name)
            self._bound = (config, head)
        return self._bound

    def build_model(self, model_cfg, run_dir: str, specaugment=None, adapter=None):
        """The model with the task's head, and what ships with it (`prepare`); `specaugment`: augment.specaugment,
        the masks the model (or its input) gets in training; `adapter`: conf/adapter's (speechkit/models/adapters.py),
        attached last, so that what the task added to the model trains with the head."""
        config, head = self.model_config(model_cfg)
        model = build_model(model_cfg, head, specaugment, adapter, (config, self.family), **self.head_config())
        self.specaugment = specaugment
        self.bind(model, self.family.feature_extractor(model.config, model_cfg))
        self.prepare(model, run_dir)
        if adapter is not None:
            adapter.attach(model, self.family)
        return model

    def bind(self, model, feature_extractor) -> None:
        """The model this task now trains or scores, and what turns clips into its input."""
        self.config, self.feature_extractor = model.config, feature_extractor
        self.family = self.family or family_of(model.config.model_type)
        self.inputs = self.family.inputs(model.config, feature_extractor, self.specaugment)
        self._collator = None

    def prepare(self, model, run_dir: str) -> None:
        """After build_model: what the task makes for its model (a tokenizer, settings in its config)."""

    # ------------------------------------------------------------------------------------------ a saved model
    @classmethod
    def from_model_dir(cls, model_dir: str, **options):
        """(task, model) of a saved model; `options`: evaluate.py's overrides of the settings the model was trained
        with (those the task does not have are ignored)."""
        model, _ = load(model_dir)
        return cls.restore(model, model_dir, options), model

    @classmethod
    def restore(cls, model, model_dir: str, options: dict) -> "Task":
        """The task of a saved model, its settings read from the model's config, bound to the model and the feature
        extractor saved beside it."""
        raise NotImplementedError

    @staticmethod
    def saved_feature_extractor(model_dir: str):
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(model_dir)

    def check_eval_rows(self, rows, split: str, report):
        """Evaluation rows the saved model cannot score are reported and left out."""
        return rows

    def save(self, path: str) -> None:
        """What ships beside the weights in model/."""
        self.feature_extractor.save_pretrained(path)

    # ---------------------------------------------------------------------------------- data and scoring
    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def padded_to(self) -> Optional[int]:
        """Samples every clip is fed padded to: a model of a fixed input window (Whisper, AST) takes the whole window
        whatever the clip, so every clip counts the window in a batch's duration (trainer.batch_duration_s), and
        batches are taken as drawn unless trainer.group_by_length=true (speechkit/data/samplers.py: batch_sampler).
        None: clips are padded to the batch's longest (or no model is bound yet). The family says it, for every task."""
        return self.family.input_window(self.feature_extractor) if self.family is not None else None

    def targets(self, rows) -> list:
        """Each checked row's target, as the dataset's items carry it (`labels`)."""
        raise NotImplementedError

    def dataset(self, rows, training: bool, augment=None):
        """The torch dataset of checked rows; a training one is cropped where the task crops and changed by
        `augment` (speechkit/data/augment.py: Augmenter) when given."""
        from speechkit.data import SpeechDataset

        if self.padded_to and training:
            window = self.padded_to / self.sampling_rate
            log.info("%s pads every clip to its %g s input window: each clip counts %g s of a batch's duration "
                     "(trainer.batch_duration_s), and batches take clips as drawn, whatever their duration, unless "
                     "trainer.group_by_length=true", self.family.name, window, window)
        return SpeechDataset(rows, self.sampling_rate, self.targets(rows), crop=self.crop if training else None,
                             augment=augment if training else None)

    def target_of(self, value, audio: str = ""):
        """A streamed training row's target for its normalized text, label or turns (`audio`: its file), or why it
        has none: (target, reason, detail)."""
        raise NotImplementedError

    def batch_targets(self) -> Callable[[List[dict], dict], dict]:
        """What stacks a batch's targets from its items' `labels`: `(items, batch) -> {"labels": ...}` (a small
        object: loader workers get a copy)."""
        raise NotImplementedError

    def collator(self, training: bool = True) -> Collator:
        """One collator for training and evaluation (training clips come already cropped from the dataset), made
        once the targets are known."""
        if self._collator is None:
            self._collator = Collator(self.inputs, self.batch_targets(), self.labels_to_model)
        return self._collator

    def forward(self, model, batch: dict):
        """The model's output for a batch, its loss included."""
        out = model(**self.collator().model_inputs(batch))
        if "labels" in batch and not self.labels_to_model:
            out["loss"] = self.loss(out, batch)
        return out

    def loss(self, out, batch: dict):
        raise NotImplementedError

    def evaluate(self, model, loader, dataset, accelerator):
        """The model scored on a split (speechkit/tasks/scoring.py: EvalResult)."""
        raise NotImplementedError

    def after_training(self, model, eval_set, accelerator, run_dir: str, result, batch_size: int):
        """The task's last step on the shipped model (speech recognition: the n-gram LM); returns its evaluation."""
        return result

    def report_sections(self, result, ids: List[str], durations, audio: Optional[dict] = None, kept: str = "") -> list:
        """report.html's sections (speechkit/report.py); `audio`: {k: clip k's file relative to the page} for the
        clips kept playable (report_clips), `kept`: a line saying which."""
        raise NotImplementedError

    def report_clips(self, result) -> List[int]:
        """The clips (places in result.rows) report.html plays, in the order they are worth hearing: worst first.
        The run dir keeps them from the first until speechkit/tasks/scoring.py's REPORT_AUDIO_S."""
        return list(range(len(result.rows)))

    def examples(self, result, n: int) -> str:
        """A few lines of the evaluation for the console."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- inspection
    def inventory(self, rows) -> "Counter":  # noqa: F821
        """What inspect_data.py counts in a checked split (inventory_kind)."""
        raise NotImplementedError
