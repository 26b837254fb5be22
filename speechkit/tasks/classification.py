"""task=audio_classification: one class per clip (softmax, accuracy and macro-F1), or several (task.multi_label:
sigmoid, mAP, as AudioSet is labelled). Labels come from `dataset.label_column`; their ids ship in the model's config
(`id2label`/`label2id`), so the stock `pipeline("audio-classification")` names its predictions."""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, List as ListOf, Sequence as SequenceOf
from sklearn import metrics as skm
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, PreTrainedModel

from speechkit import data
from speechkit.data.audio import audio_ref
from speechkit.config import ConfigError, LabelSet, ModelConfig, TaskConfig
from speechkit.data import DropReport, SpeechDataset
from speechkit.models import build_model, feature_extractor_for, input_window_samples, uses_attention_mask
from speechkit.tasks.scoring import EvalResult, gather_predictions

log = logging.getLogger(__name__)

MULTI, SINGLE = "multi_label_classification", "single_label_classification"


def parse_labels(raw, multi_label: bool) -> List[str]:
    """A cell of the label column as a list of labels: a list as is, a string split at ";" when multi-label."""
    if isinstance(raw, (list, tuple)):
        return [str(x).strip() for x in raw if str(x).strip()]
    raw = str(raw).strip()
    return [p.strip() for p in raw.split(";") if p.strip()] if multi_label else [raw]


class ClassificationCollator:
    """Turns the clips (training ones already cut to a random window by the dataset) into the model's input (AST's
    filter bank, padded or cut to its window; or wav2vec2's normalised waveform, padded, with its mask) and stacks
    the targets (class ids, or multi-hot rows for multi-label)."""

    def __init__(self, feature_extractor, pass_attention_mask: bool, num_labels: int, multi_label: bool):
        self.feature_extractor = feature_extractor
        self.window = input_window_samples(feature_extractor)  # AST: what its filter bank keeps
        self.pass_attention_mask = pass_attention_mask
        self.num_labels, self.multi_label = num_labels, multi_label

    def __call__(self, items: List[Optional[dict]]) -> Optional[dict]:
        items = [x for x in items if x is not None]
        if not items:
            return None
        clips = [x["input_values"] for x in items]
        fe = self.feature_extractor
        if self.window:
            features = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
            seen = [min(len(c), self.window) for c in clips]
            padded = self.window * len(clips)
        else:
            features = fe(clips, sampling_rate=fe.sampling_rate, padding=True, return_attention_mask=True,
                          return_tensors="pt")
            seen = [len(c) for c in clips]
            padded = int(features["input_values"].numel())
        batch = {"input_values": features["input_values"], "index": torch.tensor([x["index"] for x in items]),
                 "audio_samples": sum(seen), "padded_samples": padded}
        if "attention_mask" in features:
            batch["attention_mask"] = features["attention_mask"]
        if "labels" in items[0]:
            if self.multi_label:
                targets = torch.zeros(len(items), self.num_labels)
                for row, x in enumerate(items):
                    targets[row, x["labels"]] = 1.0
            else:
                targets = torch.tensor([x["labels"][0] for x in items], dtype=torch.long)
            batch["labels"] = targets
        return batch

    def model_inputs(self, batch: dict) -> dict:
        inputs = {"input_values": batch["input_values"]}
        if self.pass_attention_mask and "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"]
        return inputs


class AudioClassification:
    name = "audio_classification"
    head = "classification"  # the model head it needs (speechkit/models/)
    target = data.LABEL
    unit = "clips"

    def __init__(self, cfg: Optional[TaskConfig] = None, model_cfg: Optional[ModelConfig] = None):
        self.cfg = cfg or TaskConfig()
        self.model_cfg = model_cfg
        self.multi_label = self.cfg.multi_label
        self.labels: List[str] = []
        self.feature_extractor = None
        self._collate: Optional[ClassificationCollator] = None
        self.crop: Optional[int] = None  # training clips longer than this many samples are cut (set in build_model)

    # ------------------------------------------------------------------------ training: targets and model
    def fit_targets(self, train_rows: Dataset, eval_rows: Dataset, splits: Tuple[str, str], report: DropReport,
                    run_dir: str, is_main: bool) -> Tuple[Dataset, Dataset]:
        """The label set: every label of the training split, sorted (task.label_set=data), or the pretrained
        checkpoint's own (task.label_set=checkpoint: its head is kept; clips with other labels are dropped and
        reported). With labels from the data, a label only the evaluation split has cannot be learnt, so it is
        refused here rather than scored as a certain error."""
        train = [parse_labels(v, self.multi_label) for v in data.labels(train_rows)]
        if not self.multi_label:
            several = next((i for i, labels in enumerate(train) if len(labels) != 1), None)
            if several is not None:
                raise ConfigError(f"dataset.label_column: split '{splits[0]}' row {several} has labels {train[several]}"
                                  "; set task.multi_label=true for clips with several labels")
        if self.cfg.label_set == LabelSet.checkpoint:
            if not self.model_cfg.name_or_path:
                raise ConfigError("task.label_set=checkpoint needs a pretrained model (model.name_or_path)")
            id2label = AutoConfig.from_pretrained(self.model_cfg.name_or_path,
                                                  revision=self.model_cfg.revision).id2label
            self.labels = [id2label[i] for i in sorted(id2label)]
            return (self.check_eval_rows(train_rows, splits[0], report),
                    self.check_eval_rows(eval_rows, splits[1], report))
        self.labels = sorted({label for labels in train for label in labels})
        if len(self.labels) < 2:
            raise ConfigError(f"dataset.label_column: split '{splits[0]}' has {len(self.labels)} distinct label(s) "
                              f"{self.labels}; a classifier needs at least 2")
        known = set(self.labels)
        unseen = sorted({label for v in data.labels(eval_rows) for label in parse_labels(v, self.multi_label)} - known)
        if unseen:
            raise ConfigError(f"dataset.label_column: split '{splits[1]}' has label(s) the training split "
                              f"'{splits[0]}' never has: {unseen[:10]}{' ...' if len(unseen) > 10 else ''}; the model "
                              "could never predict them (move such clips into training, or out of the evaluation "
                              "split)")
        return train_rows, eval_rows

    def describe_targets(self) -> str:
        return f"{len(self.labels)} classes" + (" (multi-label)" if self.multi_label else "")

    def build_model(self, cfg: ModelConfig, run_dir: str) -> PreTrainedModel:
        model = build_model(cfg, "classification", num_labels=len(self.labels),
                            id2label=dict(enumerate(self.labels)), label2id={k: i for i, k in enumerate(self.labels)},
                            problem_type=MULTI if self.multi_label else SINGLE)
        self.feature_extractor = feature_extractor_for(model, cfg)
        window = input_window_samples(self.feature_extractor)
        crop = int(self.cfg.max_length_s * cfg.sampling_rate) if self.cfg.max_length_s else None
        self.crop = min(c for c in (crop, window) if c) if (crop or window) else None
        self.pass_attention_mask = uses_attention_mask(model)
        return model

    # ---------------------------------------------------------------------------------- a saved model
    @classmethod
    def from_model_dir(cls, model_dir: str, multi_label: Optional[bool] = None
                       ) -> Tuple["AudioClassification", PreTrainedModel]:
        """A saved classifier; `multi_label` null: as its config says, or as the data has it if it says nothing."""
        model = AutoModelForAudioClassification.from_pretrained(model_dir)
        if multi_label is None and model.config.problem_type in (MULTI, SINGLE):
            multi_label = model.config.problem_type == MULTI
        task = cls(TaskConfig(name="audio_classification", multi_label=bool(multi_label)))
        task.multi_label = multi_label  # None until the data decides (check_eval_rows)
        task.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task.feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        task.crop, task.pass_attention_mask = None, uses_attention_mask(model)
        return task, model

    def check_eval_rows(self, rows: Dataset, split: str, report: DropReport) -> Dataset:
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
            raise ConfigError(f"dataset.label_column: no clip of split '{split}' has a label the model knows "
                              f"({self.labels[:10]} ...)")
        return rows if len(keep) == len(rows) else rows.select(keep)

    def save(self, path: str) -> None:
        self.feature_extractor.save_pretrained(path)

    # ----------------------------------------------------------------------------- data and scoring
    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    def target_of(self, value, audio: str = "") -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's class ids, or why it has none (dataset.streaming, speechkit/data/streaming.py): a
        label the label set lacks is dropped as check_eval_rows drops it."""
        labels = parse_labels(value, self.multi_label)
        if not self.multi_label and len(labels) != 1:
            return None, "several_labels", ";".join(labels)
        ids = {label: i for i, label in enumerate(self.labels)}
        unknown = [label for label in labels if label not in ids]
        if unknown and (not self.multi_label or len(unknown) == len(labels)):
            return None, "unknown_label", ";".join(unknown)
        return [ids[label] for label in labels if label in ids], "", ""

    def dataset(self, rows: Dataset, training: bool) -> SpeechDataset:
        ids = {label: i for i, label in enumerate(self.labels)}
        targets = [[ids[label] for label in parse_labels(v, self.multi_label) if label in ids]
                   for v in data.labels(rows)]
        return SpeechDataset(rows, self.sampling_rate, targets, crop=self.crop if training else None)

    def collator(self, training: bool) -> ClassificationCollator:
        """One collator for training and evaluation (training clips come already cropped from the dataset), made
        once the label set and multi-label are known."""
        if self._collate is None:
            self._collate = ClassificationCollator(self.feature_extractor, self.pass_attention_mask, len(self.labels),
                                                   self.multi_label)
        return self._collate

    def forward(self, model, batch: dict):
        """The model's output, with the loss computed here: cross-entropy, or binary cross-entropy per label for
        multi-label (wav2vec2's sequence-classification head only knows the former)."""
        out = model(**self.collator(False).model_inputs(batch))
        if "labels" in batch:
            logits = out.logits.float()
            out["loss"] = (F.binary_cross_entropy_with_logits(logits, batch["labels"]) if self.multi_label
                           else F.cross_entropy(logits, batch["labels"]))
        return out

    def evaluate(self, model, loader, dataset: SpeechDataset, accelerator) -> EvalResult:
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

    def after_training(self, model, eval_set: SpeechDataset, accelerator, run_dir: str, result: EvalResult,
                       batch_size: int) -> EvalResult:
        return result  # nothing to add to a classifier once it is shipped

    def report_sections(self, result: EvalResult, ids: List[str], durations) -> list:
        """report.html: scores, the per-class table, the confusion matrix, the clips it got wrong."""
        from speechkit.report import classification_sections

        return classification_sections(result.metrics, result.tables["per_class"], result.tables.get("confusion"),
                                       self.labels, result.predictions, ids)

    def examples(self, result: EvalResult, n: int) -> str:
        """The per-class table, for the console."""
        width = max([len(r["label"]) for r in result.tables["per_class"]] + [5])
        lines = [f"{'label':<{width}}  precision  recall     f1  support"]
        lines += [f"{r['label']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:5.4f}  {r['support']:7d}"
                  for r in result.tables["per_class"]]
        return "\n".join(lines)
