"""task=audio_classification: one class per clip (softmax, accuracy and macro-F1), or several (task.multi_label:
sigmoid, mAP, as AudioSet is labelled). Labels come from `dataset.columns.label`; their ids ship in the model's config
(`id2label`/`label2id`), so the stock `pipeline("audio-classification")` names its predictions."""

from __future__ import annotations

import logging
from collections import Counter
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from datasets import List as ListOf, Sequence as SequenceOf
from sklearn import metrics as skm

from speechkit import data
from speechkit.config import ClassificationConfig, ConfigError, LabelSet
from speechkit.data.audio import audio_ref
from speechkit.data.references import parse_labels
from speechkit.tasks.base import Score, Task
from speechkit.tasks.scoring import EvalResult, gather_predictions

log = logging.getLogger(__name__)

MULTI, SINGLE = "multi_label_classification", "single_label_classification"


class ClassTargets:
    """A batch's targets: class ids, or multi-hot rows for multi-label."""

    def __init__(self, num_labels: int, multi_label: bool):
        self.num_labels, self.multi_label = num_labels, multi_label

    def __call__(self, items: List[dict], batch: dict) -> dict:
        if self.multi_label:
            targets = torch.zeros(len(items), self.num_labels)
            for row, x in enumerate(items):
                targets[row, x["labels"]] = 1.0
        else:
            targets = torch.tensor([x["labels"][0] for x in items], dtype=torch.long)
        return {"labels": targets}


class AudioClassification(Task):
    name = "audio_classification"
    target = data.LABEL
    unit = "clips"
    pipeline = "audio-classification"
    card_kind = "An audio classification"
    card_usage = ('from transformers import pipeline\n'
                  'classify = pipeline("audio-classification", model="<this folder or repo>")\n'
                  'print(classify("clip.wav"))')
    inventory_kind = "labels"

    def __init__(self, cfg: Optional[ClassificationConfig] = None, dataset=None, model=None):
        super().__init__(cfg or ClassificationConfig(), dataset, model)
        self.multi_label = self.cfg.multi_label
        self.labels: List[str] = []

    @classmethod
    def scores(cls, cfg) -> List[Score]:
        accuracy = Score("eval_accuracy", "accuracy", "accuracy", lower_is_better=False)
        f1 = Score("eval_macro_f1", "macro-F1", "f1", lower_is_better=False)
        if cfg.multi_label:
            return [Score("eval_map", "mAP", "map", lower_is_better=False), accuracy, f1]
        return [accuracy, f1]

    # ------------------------------------------------------------------------ training: targets and model
    def fit_targets(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The label set: every label of the training split, sorted (task.label_set=data), or the pretrained
        checkpoint's own (task.label_set=checkpoint: its head is kept; clips with other labels are dropped and
        reported). With labels from the data, a label only the evaluation split has cannot be learnt, so it is
        refused here rather than scored as a certain error."""
        train = [parse_labels(v, self.multi_label) for v in data.labels(train_rows)]
        if not self.multi_label:
            several = next((i for i, labels in enumerate(train) if len(labels) != 1), None)
            if several is not None:
                raise ConfigError(f"dataset.columns.label: split '{splits[0]}' row {several} has labels "
                                  f"{train[several]}; set task.multi_label=true for clips with several labels")
        if self.cfg.label_set == LabelSet.checkpoint:
            if not self.model_cfg.name_or_path:
                raise ConfigError("task.label_set=checkpoint needs a pretrained model (model.name_or_path)")
            from transformers import AutoConfig

            id2label = AutoConfig.from_pretrained(self.model_cfg.name_or_path,
                                                  revision=self.model_cfg.revision).id2label
            self.labels = [id2label[i] for i in sorted(id2label)]
            return (self.check_eval_rows(train_rows, splits[0], report),
                    self.check_eval_rows(eval_rows, splits[1], report))
        self.labels = sorted({label for labels in train for label in labels})
        if len(self.labels) < 2:
            raise ConfigError(f"dataset.columns.label: split '{splits[0]}' has {len(self.labels)} distinct label(s) "
                              f"{self.labels}; a classifier needs at least 2")
        known = set(self.labels)
        unseen = sorted({label for v in data.labels(eval_rows) for label in parse_labels(v, self.multi_label)} - known)
        if unseen:
            raise ConfigError(f"dataset.columns.label: split '{splits[1]}' has label(s) the training split "
                              f"'{splits[0]}' never has: {unseen[:10]}{' ...' if len(unseen) > 10 else ''}; the model "
                              "could never predict them (move such clips into training, or out of the evaluation "
                              "split)")
        return train_rows, eval_rows

    def describe_targets(self) -> str:
        return f"{len(self.labels)} classes" + (" (multi-label)" if self.multi_label else "")

    def head_config(self) -> dict:
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {k: i for i, k in enumerate(self.labels)},
                "problem_type": MULTI if self.multi_label else SINGLE}

    def prepare(self, model, run_dir: str) -> None:
        """Training clips are cut to task.max_length_s, or to the model's own input window (AST's filter bank keeps
        max_length frames), whichever is shorter."""
        window = self.inputs.window
        crop = int(self.cfg.max_length_s * self.sampling_rate) if self.cfg.max_length_s else None
        self.crop = min(c for c in (crop, window) if c) if (crop or window) else None

    # ---------------------------------------------------------------------------------- a saved model
    @classmethod
    def restore(cls, model, model_dir: str, options: dict) -> "AudioClassification":
        """A saved classifier; `multi_label` null: as its config says, or as the data has it if it says nothing."""
        multi_label = options.get("multi_label")
        if multi_label is None and model.config.problem_type in (MULTI, SINGLE):
            multi_label = model.config.problem_type == MULTI
        task = cls(ClassificationConfig(multi_label=bool(multi_label)))
        task.multi_label = multi_label  # None until the data decides (check_eval_rows)
        task.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task.bind(model, cls.saved_feature_extractor(model_dir))
        return task

    def check_eval_rows(self, rows, split: str, report):
        """Clips with a label the model does not know are counted, reported (drop_report.jsonl) and left out; with
        several labels, only clips none of whose labels the model knows (AudioSet has classes a checkpoint may
        lack: the known ones are scored)."""
        known = set(self.labels)
        keep, files = [], None
        if self.multi_label is None:  # a model that does not say: lists of labels mean multi-label data
            self.multi_label = isinstance(rows.features[data.LABEL], (ListOf, SequenceOf))
            log.info("Scoring as %s-label: the label column holds %s", "multi" if self.multi_label else "single",
                     "lists" if self.multi_label else "single values")
        for i, v in enumerate(data.labels(rows)):
            labels = parse_labels(v, self.multi_label)
            unknown = [label for label in labels if label not in known]
            if unknown and (not self.multi_label or len(unknown) == len(labels)):
                files = files or rows.select_columns([data.AUDIO])
                report.add(split, i, audio_ref(files[i][data.AUDIO]), "unknown_label", ";".join(unknown))
            else:
                keep.append(i)
        if len(keep) < len(rows):
            log.warning("split '%s': %d clip(s) have labels the model does not know; left out (drop_report.jsonl)",
                        split, len(rows) - len(keep))
        if not keep:
            raise ConfigError(f"dataset.columns.label: no clip of split '{split}' has a label the model knows "
                              f"({self.labels[:10]} ...)")
        return rows if len(keep) == len(rows) else rows.select(keep)

    # ----------------------------------------------------------------------------- data and scoring
    def target_of(self, value, audio: str = "") -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's class ids, or why it has none (dataset.streaming): a label the label set
        lacks is dropped as check_eval_rows drops it."""
        labels = parse_labels(value, self.multi_label)
        if not self.multi_label and len(labels) != 1:
            return None, "several_labels", ";".join(labels)
        ids = {label: i for i, label in enumerate(self.labels)}
        unknown = [label for label in labels if label not in ids]
        if unknown and (not self.multi_label or len(unknown) == len(labels)):
            return None, "unknown_label", ";".join(unknown)
        return [ids[label] for label in labels if label in ids], "", ""

    def targets(self, rows) -> list:
        ids = {label: i for i, label in enumerate(self.labels)}
        return [[ids[label] for label in parse_labels(v, self.multi_label) if label in ids] for v in data.labels(rows)]

    def batch_targets(self) -> ClassTargets:
        return ClassTargets(len(self.labels), self.multi_label)

    def loss(self, out, batch: dict):
        """Cross-entropy, or binary cross-entropy per label for multi-label (wav2vec2's sequence-classification head
        only knows the former)."""
        logits = out.logits.float()
        return (F.binary_cross_entropy_with_logits(logits, batch["labels"]) if self.multi_label
                else F.cross_entropy(logits, batch["labels"]))

    def evaluate(self, model, loader, dataset, accelerator) -> EvalResult:
        by_row, loss, gathered = gather_predictions(model, loader, accelerator, self.forward,
                                                    lambda out, batch, unwrapped: out.logits.float())
        rows = sorted(by_row)
        logits = torch.stack([by_row[r] for r in rows])
        probs = (torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)).numpy()
        n = len(self.labels)
        truth = np.zeros((len(rows), n), dtype=np.int64)
        for k, r in enumerate(rows):
            truth[k, dataset.targets[r]] = 1
        top = probs.argmax(-1)
        hit = truth[np.arange(len(rows)), top] == 1  # the top label is (one of) the clip's labels
        metrics = {"eval_loss": loss, "eval_accuracy": float(hit.mean())}
        if self.multi_label:
            scored = truth.sum(0) > 0  # average precision is undefined for a class with no positive clip
            metrics["eval_map"] = float(skm.average_precision_score(truth[:, scored], probs[:, scored],
                                                                    average="macro"))
            metrics["eval_macro_f1"] = float(skm.f1_score(truth, probs >= 0.5, average="macro", zero_division=0))
            predicted = probs >= 0.5
        else:
            y = truth.argmax(-1)
            metrics["eval_macro_f1"] = float(skm.f1_score(y, top, labels=range(n), average="macro", zero_division=0))
            predicted = np.eye(n, dtype=bool)[top]
        metrics.update(eval_clips=len(rows), eval_gathered=gathered)
        precision, recall, f1, support = skm.precision_recall_fscore_support(truth, predicted, labels=range(n),
                                                                             zero_division=0)
        per_class = [{"label": self.labels[i], "precision": round(float(precision[i]), 4),
                      "recall": round(float(recall[i]), 4), "f1": round(float(f1[i]), 4), "support": int(support[i])}
                     for i in range(n)]
        tables = {"per_class": per_class}
        if not self.multi_label:
            tables["confusion"] = skm.confusion_matrix(truth.argmax(-1), top, labels=range(n)).tolist()
        key = metrics["eval_map"] if self.multi_label else metrics["eval_accuracy"]
        summary = (f"mAP {metrics['eval_map']:.4f}  accuracy {metrics['eval_accuracy']:.4f}" if self.multi_label
                   else f"accuracy {metrics['eval_accuracy']:.4f}  macro-F1 {metrics['eval_macro_f1']:.4f}")
        predictions = [{"reference": ";".join(self.labels[i] for i in dataset.targets[r]),
                        "prediction": self.labels[top[k]], "score": f"{probs[k, top[k]]:.4f}",
                        "correct": int(hit[k])} for k, r in enumerate(rows)]
        return EvalResult(metrics=metrics, rank=(-key, -metrics["eval_macro_f1"], loss), objective=1.0 - key,
                          summary=summary, rows=rows, predictions=predictions, tables=tables)

    def report_sections(self, result: EvalResult, ids: List[str], durations, audio=None, kept: str = "") -> list:
        """report.html: scores, the per-class table, the confusion matrix, the clips it got wrong (each playable)."""
        from speechkit.report import classification_sections

        return classification_sections(result.metrics, result.tables["per_class"], result.tables.get("confusion"),
                                       self.labels, result.predictions, ids, audio, kept)

    def report_clips(self, result: EvalResult) -> List[int]:
        """The clips the top label got wrong, the most confidently wrong first."""
        wrong = [k for k, p in enumerate(result.predictions) if not int(p["correct"])]
        return sorted(wrong, key=lambda k: -float(result.predictions[k]["score"]))

    def examples(self, result: EvalResult, n: int) -> str:
        """The per-class table, for the console."""
        width = max([len(r["label"]) for r in result.tables["per_class"]] + [5])
        lines = [f"{'label':<{width}}  precision  recall     f1  support"]
        lines += [f"{r['label']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:5.4f}  {r['support']:7d}"
                  for r in result.tables["per_class"]]
        return "\n".join(lines)

    # --------------------------------------------------------------------------------------------- inspection
    def inventory(self, rows) -> Counter:
        """Clips per label."""
        return Counter(label for v in data.labels(rows) for label in parse_labels(v, self.cfg.multi_label))
