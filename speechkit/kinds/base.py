"""The head-kind contract: what speech recognition (speechkit/tasks/asr.py), transcribe.py's long-form engine
(speechkit/recordings.py) and validation ask of a way audio becomes text. A kind (speechkit/kinds/<kind>/) fills
in what the base leaves open; the base holds what every kind shares.

Rules:       refusals (class method: read by validation before any import, and by check_model at build)
Training:    check_model, fit, describe, head_config, prepare, targets, target_of, batch_targets, forward
A saved model:  restore, check_eval_rows, processor (what ships beside the weights)
Scoring:     decode, decoder_label, decoder_name, after_training
Long form:   long_form (a LongForm: window, read, join)
Export:      export_graphs (None: the one-pass logits graph speechkit/onnx_export.py makes for any head)
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

from speechkit.config import ConfigError

# (key, value, what it must be) of a setting a kind cannot take, as validation.py's refusals word it
Refusal = Tuple[str, object, str]
# a config value by its dotted key ("task.decoder.type", "dataset.language"), None where it is absent
Getter = Callable[[str], object]


def refusal_message(key: str, value, allowed: str) -> str:
    """One wording for a refused setting, early (validation.py) and at build alike."""
    return f"{key}={value!r} is not allowed: {key} must be {allowed}"


def pad_labels(items: List[dict], batch: dict) -> dict:
    """Label ids padded with -100, which the CTC loss ignores (and so does a decoder's cross-entropy)."""
    import torch

    longest = max(len(x["labels"]) for x in items)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)
    for row, x in enumerate(items):
        labels[row, : len(x["labels"])] = torch.tensor(x["labels"], dtype=torch.long)
    return {"labels": labels}


class LongForm:
    """How transcribe.py's windows of a long recording go through the model and are joined: `window` settles the
    window and its context, `read` turns a batch of windows (new start, new end, window start, samples) into parts,
    `join` turns a recording's parts into {"text", "words"[, "segments"]}; `decoder` names the decoding in the JSON.
    `runner` (speechkit/recordings.py's Transcriber) holds the task, the model, the accelerator and the rate."""

    decoder: str = ""

    def __init__(self, runner):
        self.t = runner

    def window(self, chunk_s: float, stride_s: float) -> Tuple[float, float]:
        return chunk_s, stride_s

    def read(self, batch: List[tuple]) -> list:
        raise NotImplementedError

    def join(self, parts: list, packed: Optional[list] = None) -> dict:
        raise NotImplementedError


class HeadKind:
    name: str = ""  # the head (speechkit/inference/heads.py)
    card_kind: str = ""  # the model card's words for what the model is
    # export.py's graphs of a model of this kind: export_graphs(model, example, path, lengths, write, axes) -> the
    # path of its main graph; None: the logits of one forward pass, as speechkit/onnx_export.py exports any head
    export_graphs = None

    def __init__(self, task):
        self.task, self.cfg = task, task.cfg
        self.processor = None  # the tokenizer and the feature extractor, as they ship

    # ------------------------------------------------------------------------------------------------- rules
    @classmethod
    def refusals(cls, get: Getter, family) -> Iterator[Refusal]:
        """The settings (`get`: a value by its dotted key) this kind cannot take with a model of `family`."""
        return iter(())

    def check_model(self, config, family) -> None:
        """Before any data: the kind's rules on the run's settings (the same list validation.py reads)."""
        for key, value, allowed in self.refusals(self.setting, family):
            raise ConfigError(refusal_message(key, value, allowed))

    def setting(self, key: str):
        """A run's setting by its dotted key (task.*, dataset.*, model.*), as validation.py reads it from the raw
        config (an enum by its value)."""
        scope, _, rest = key.partition(".")
        node = {"task": self.task.cfg, "dataset": self.task.dataset_cfg, "model": self.task.model_cfg}.get(scope)
        for part in rest.split("."):
            node = getattr(node, part, None)
        return getattr(node, "value", node)

    # ---------------------------------------------------------------------------- training: targets and model
    def fit(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The targets learnt from the training split, checked against both; returns the (train, eval) rows left."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def head_config(self) -> dict:
        """The new head's settings, set on the model's config (a pretrained head kept: none)."""
        return {}

    def prepare(self, model, run_dir: str) -> None:
        """After the model is built: the processor that ships, the model's settings for decoding."""

    def targets(self, rows) -> list:
        raise NotImplementedError

    def target_of(self, text: str) -> Tuple[Optional[List[int]], str, str]:
        """A row's label ids, or why it has none: (ids, reason, detail)."""
        raise NotImplementedError

    def batch_targets(self):
        return pad_labels

    def forward(self, model, batch: dict, out):
        """The model's output, its loss changed where the kind adds to it."""
        return out

    # ---------------------------------------------------------------------------------------- a saved model
    def restore(self, model, model_dir: str) -> None:
        raise NotImplementedError

    def check_eval_rows(self, rows, split: str, report):
        return rows

    # ---------------------------------------------------------------------------------------------- scoring
    def decode(self, model, loader, accelerator, keep_logits: bool = True):
        """({row: hypothesis}, {row: greedy text} or None, mean loss, predictions gathered)."""
        raise NotImplementedError

    @property
    def decoder_label(self) -> Optional[str]:
        """How the summary names the decoder when it is not the plain one."""
        return None

    @property
    def decoder_name(self) -> str:
        raise NotImplementedError

    def after_training(self, model, eval_set, accelerator, run_dir: str, result, batch_size: int):
        return result

    # -------------------------------------------------------------------------------------------- long form
    def long_form(self, runner) -> LongForm:
        raise NotImplementedError
