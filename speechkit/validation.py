"""Every value of the composed config checked before any work: no torch, datasets or transformers imported yet.

The schemas (speechkit/config.py) check types and names as Hydra composes; this checks ranges, paths and
combinations, so that a bad value is refused in about a second with one line naming the key and what it allows,
never after the imports, the checking pass or a whole training run. Keys a primary config does not have (serve.py
has no trainer) are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from typing import Any, Callable, Dict, Tuple

from omegaconf import DictConfig, OmegaConf

from speechkit.config import AdapterKind, AdapterShip, ConfigError, OptimizerName, Source

_ABSENT = object()
Check = Tuple[Callable[[Any], bool], str]

POSITIVE: Check = (lambda v: v > 0, "a number > 0")
POSITIVE_INT: Check = (lambda v: v > 0, "an integer > 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, "a number >= 0")
PROBABILITY: Check = (lambda v: 0 <= v <= 1, "a probability in [0, 1]")
BETA: Check = (lambda v: 0 <= v < 1, "a number in [0, 1)")
OPEN_UNIT: Check = (lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def _or_null(check: Check) -> Check:
    test, allowed = check
    return (lambda v: v is None or test(v), f"{allowed}, or null")


RANGES: Dict[str, Check] = {
    # conf/trainer
    "trainer.num_epochs": POSITIVE, "trainer.max_steps": _or_null(POSITIVE_INT),
    "trainer.batch_size": POSITIVE_INT, "trainer.batch_duration_s": _or_null(POSITIVE),
    "trainer.eval_batch_size": POSITIVE_INT, "trainer.gradient_accumulation_steps": POSITIVE_INT,
    "trainer.learning_rate": POSITIVE, "trainer.weight_decay": NON_NEGATIVE, "trainer.adam_beta1": BETA,
    "trainer.adam_beta2": BETA, "trainer.adam_epsilon": POSITIVE, "trainer.warmup_steps": NON_NEGATIVE,
    "trainer.max_grad_norm": POSITIVE, "trainer.num_workers": _or_null(NON_NEGATIVE),
    "trainer.logging_steps": POSITIVE_INT, "trainer.eval_steps": _or_null(POSITIVE_INT),
    "trainer.save_steps": _or_null(POSITIVE_INT), "trainer.save_total_limit": _or_null(NON_NEGATIVE),
    "trainer.ema_decay": _or_null(OPEN_UNIT),
    "trainer.average_last": _or_null((lambda v: v >= 2, "an integer >= 2 (checkpoints averaged)")),
    "trainer.tri_stage.hold_ratio": BETA, "trainer.tri_stage.final_lr_ratio": PROBABILITY,
    # conf/model
    "model.sampling_rate": POSITIVE_INT, "model.attention_dropout": _or_null(PROBABILITY),
    "model.hidden_dropout": _or_null(PROBABILITY), "model.activation_dropout": _or_null(PROBABILITY),
    "model.feat_proj_dropout": _or_null(PROBABILITY), "model.final_dropout": _or_null(PROBABILITY),
    "model.mask_time_prob": _or_null(PROBABILITY), "model.layerdrop": _or_null(PROBABILITY),
    # conf/dataset
    "dataset.filters.min_duration_s": NON_NEGATIVE, "dataset.filters.max_duration_s": _or_null(POSITIVE),
    "dataset.filters.silence_peak": BETA, "dataset.carve.test_ratio": OPEN_UNIT,
    "dataset.num_proc": _or_null(POSITIVE_INT), "dataset.demo.num_train": POSITIVE_INT,
    "dataset.demo.num_test": POSITIVE_INT, "dataset.shuffle_buffer": POSITIVE_INT,
    "dataset.demo.speeds": (lambda v: len(v) > 0 and all(80 <= s <= 450 for s in v),
                            "a non-empty list of words per minute in [80, 450] (espeak-ng's range)"),
    "dataset.demo.pitches": (lambda v: len(v) > 0 and all(0 <= p <= 99 for p in v),
                             "a non-empty list of pitches in [0, 99]"),
    "dataset.demo.voices": (lambda v: len(v) > 0, "a non-empty list of espeak-ng voices"),
    # conf/hw
    "hw.num_threads": _or_null(POSITIVE_INT),
    # conf/task
    "task.max_length_s": _or_null(POSITIVE), "task.chunk_s": POSITIVE, "task.threshold": OPEN_UNIT,
    "task.max_speakers": (lambda v: 1 <= v <= 6, "an integer in [1, 6] (the loss tries every order of the speakers)"),
    "task.min_turn_s": NON_NEGATIVE, "task.collar_s": NON_NEGATIVE, "collar_s": _or_null(NON_NEGATIVE),
    "task.decoder.order": (lambda v: v >= 2, "an integer >= 2 (KenLM reads bigram models and up)"),
    "task.decoder.discount": OPEN_UNIT, "task.decoder.tune_trials": POSITIVE_INT,
    "task.decoder.num_beams": POSITIVE_INT, "task.decoder.max_new_tokens": _or_null(POSITIVE_INT),
    "task.hallucination_probe": NON_NEGATIVE, "hallucination_probe": NON_NEGATIVE,
    "task.whisper_ctc_weight": BETA,
    # conf/augment
    "augment.warmup_epochs": NON_NEGATIVE, "augment.speed.factors": (lambda v: all(0.5 <= f <= 2.0 for f in v), "a list of speed factors in [0.5, 2]"),
    "augment.noise.prob": PROBABILITY, "augment.reverb.prob": PROBABILITY, "augment.gain.prob": PROBABILITY,
    "augment.noise.babble_share": PROBABILITY, "augment.noise.babble_speakers": POSITIVE_INT,
    "augment.reverb.rt60_s_min": POSITIVE, "augment.reverb.rt60_s_max": (lambda v: 0 < v <= 5,
                                                                         "a number of seconds in (0, 5]"),
    "augment.specaugment.time_prob": _or_null(PROBABILITY), "augment.specaugment.feature_prob": _or_null(PROBABILITY),
    "augment.specaugment.time_length": _or_null(POSITIVE_INT),
    "augment.specaugment.feature_length": _or_null(POSITIVE_INT),
    "augment.specaugment.time_masks": NON_NEGATIVE, "augment.specaugment.feature_masks": NON_NEGATIVE,
    # conf/adapter
    "adapter.r": POSITIVE_INT, "adapter.alpha": POSITIVE, "adapter.dropout": BETA, "adapter.attn_dim": POSITIVE_INT,
    "adapter.target_modules": _or_null((lambda v: len(v) > 0, "a non-empty list of module names")),
    # evaluate.py, inspect_data.py, serve.py, deploy.py
    "batch_size": POSITIVE_INT, "num_examples": NON_NEGATIVE, "sampling_rate": POSITIVE_INT,
    "top_chars": NON_NEGATIVE, "port": (lambda v: 0 < v < 65536, "a TCP port in 1..65535"),
    "inference.max_body_mb": POSITIVE, "inference.chunk_length_s": _or_null(POSITIVE),
    "inference.stride_length_s": _or_null(NON_NEGATIVE), "inference.read_timeout_s": POSITIVE,
    "inference.threads": POSITIVE_INT, "inference.max_audio_s": _or_null(POSITIVE), "inference.queue": NON_NEGATIVE,
    "endpoint.instance_count": POSITIVE_INT, "tolerance": _or_null(NON_NEGATIVE),
    # transcribe.py
    "chunk_length_s": POSITIVE, "stride_length_s": NON_NEGATIVE,
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def _check_vocab_file(path: str) -> None:
    """task.vocab.path: a JSON object of symbol -> id, or a refusal naming where the file goes wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"task.vocab.path={path!r}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    except UnicodeDecodeError as e:
        raise ConfigError(f"task.vocab.path={path!r}: not UTF-8 text (byte {e.start}): a vocab.json is expected")
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in vocab.items()):
        raise ConfigError(f"task.vocab.path={path!r}: a vocab.json is a JSON object of symbol -> integer id "
                          f"(as a run writes it), not a {type(vocab).__name__} of other values")


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not a local path (its first part is no folder here): a Hugging Face Hub model id."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not os.path.exists(name.split("/")[0])


def saved_model_dir(path: str) -> str:
    """`model_dir=` of evaluate.py, serve.py and transcribe.py: a folder a run's model/ was saved to (or a Hub model
    id, e.g. the AST AudioSet checkpoint), checked before any loading."""
    model_dir = os.path.expanduser(path)
    if is_hub_id(path):
        return path
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"model_dir: {model_dir} is not a saved model (no config.json); "
                          "point it at a run's model/ folder (or give a Hub model id, owner/name)")
    return model_dir


def _check_task_and_model(cfg: DictConfig) -> None:
    """The task is a registered one, and the model can have one of its heads (as far as is known without imports:
    a Hub checkpoint's config is read, and checked, before any data)."""
    from speechkit.models import family_of, model_type
    from speechkit.tasks import TASKS

    name = _get(cfg, "task.name")
    if name is _ABSENT:
        return
    if name not in TASKS or OmegaConf.get_type(cfg.task) is not TASKS[name].schema:
        _refuse("task.name", name, f"the name of the task option chosen (task={'|'.join(TASKS)}); choose a task with "
                                   "task=<name>")
    if _get(cfg, "model.name") is _ABSENT:
        return
    kind = model_type(cfg.model)
    if kind is None:
        return
    family = family_of(kind)
    heads = [h for h in TASKS[name].heads if h in family.heads]
    if not heads:
        can = [t for t, entry in TASKS.items() if set(entry.heads) & set(family.heads)]
        _refuse("model", _get(cfg, "model.name"), f"a model with a {' or '.join(TASKS[name].heads)} head for "
                                                  f"task={name} ({kind} has none: use it with task="
                                                  f"{' or task='.join(can)})")
    if _get(cfg, "model.freeze_feature_encoder") is True and not family.has_feature_encoder:
        _refuse("model.freeze_feature_encoder", True, f"false for a {kind} model (it has no convolutional feature "
                                                      "encoder to freeze)")
    if _get(cfg, "model.freeze_encoder") is True and not family.has_encoder:
        _refuse("model.freeze_encoder", True, f"false for a {kind} model (no encoder-decoder: "
                                              "model.freeze_feature_encoder freezes a convolutional front end)")
    adapter = _get(cfg, "adapter.name")
    if adapter == AdapterKind.mms and (kind not in family.language_adapter_types or "ctc" not in heads):
        _refuse("adapter", "mms", f"none or lora for a {kind} model with task={name} (MMS's adapter layers are "
                                  f"those of {', '.join(family.language_adapter_types) or 'wav2vec2'} models, "
                                  "trained with a CTC head)")
    if adapter not in (_ABSENT, AdapterKind.none) and _get(cfg, "adapter.ship") == AdapterShip.adapter \
            and _get(cfg, "model.name_or_path") is None:
        _refuse("adapter.ship", "adapter", "merged for a model built from scratch (model.name_or_path is null: "
                                           "there is no base model to load the adapter onto)")
    _check_kind(cfg, heads, family)


def _check_kind(cfg: DictConfig, heads: list, family) -> None:
    """The rules of the head kind the model gets (speechkit/kinds/: the same list the build reads), where its head
    is one of speech recognition's; the first refused setting stops it."""
    from speechkit.kinds import KINDS, kind_class

    if not heads or heads[0] not in KINDS:
        return

    def get(key: str):
        value = _get(cfg, key)
        return None if value is _ABSENT else getattr(value, "value", value)

    for key, value, allowed in kind_class(heads[0]).refusals(get, family):
        _refuse(key, value, allowed)


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value out of range, path that is not there, or combination that cannot work."""
    for key, (test, allowed) in RANGES.items():
        value = _get(cfg, key)
        if value is _ABSENT:
            continue
        try:
            ok = test(value)
        except TypeError:
            ok = False
        if not ok:
            _refuse(key, value, allowed)

    # Combinations.
    low, high = _get(cfg, "dataset.filters.min_duration_s"), _get(cfg, "dataset.filters.max_duration_s")
    if low is not _ABSENT and high not in (_ABSENT, None) and high <= low:
        _refuse("dataset.filters.max_duration_s", high, f"greater than dataset.filters.min_duration_s ({low})")
    for low_key, high_key in (("augment.noise.snr_db_min", "augment.noise.snr_db_max"),
                              ("augment.reverb.rt60_s_min", "augment.reverb.rt60_s_max"),
                              ("augment.gain.db_min", "augment.gain.db_max")):
        low, high = _get(cfg, low_key), _get(cfg, high_key)
        if low is not _ABSENT and high is not _ABSENT and high < low:
            _refuse(high_key, high, f"at least {low_key} ({low})")
    shifted, voices = _get(cfg, "dataset.demo.shifted_voices"), _get(cfg, "dataset.demo.voices")
    if shifted not in (_ABSENT, None) and voices not in (_ABSENT, None) and set(shifted) & set(voices):
        both = sorted(set(shifted) & set(voices))[0]
        _refuse("dataset.demo.shifted_voices", list(shifted), f"voices none of dataset.demo.voices (the training "
                                                               f"voices; {both} is one)")
    for prefix in ("inference.", ""):  # serve.py/deploy.py's handler, transcribe.py
        chunk, stride = _get(cfg, prefix + "chunk_length_s"), _get(cfg, prefix + "stride_length_s")
        if chunk not in (_ABSENT, None) and stride not in (_ABSENT, None) and 2 * stride >= chunk:
            _refuse(prefix + "stride_length_s", stride, f"less than half of {prefix}chunk_length_s ({chunk})")

    _check_task_and_model(cfg)
    if _get(cfg, "trainer.optimizer") == OptimizerName.adamw_8bit and importlib.util.find_spec("bitsandbytes") is None:
        _refuse("trainer.optimizer", "adamw_8bit", "adamw or adafactor here: adamw_8bit needs bitsandbytes (pip "
                                                   "install bitsandbytes; its 8-bit optimizers run on CUDA GPUs)")

    if _get(cfg, "dataset.streaming") is True:
        if _get(cfg, "trainer.max_steps") is None:
            _refuse("trainer.max_steps", None, "a number of steps > 0 with dataset.streaming=true (a stream has no "
                                               "length to count epochs in)")
        if _get(cfg, "dataset.source") == Source.hub and _get(cfg, "dataset.carve.from_split") is not None:
            _refuse("dataset.carve.from_split", _get(cfg, "dataset.carve.from_split"),
                    "null with dataset.streaming=true and a Hub source (carving needs the whole split; stream a data "
                    "set with its own splits)")

    average = _get(cfg, "trainer.average_last")
    if average not in (_ABSENT, None):
        keep, every = _get(cfg, "trainer.save_total_limit"), _get(cfg, "trainer.save_steps")
        if every is None:
            _refuse("trainer.save_steps", None, f"a number of steps with trainer.average_last={average} (it averages "
                                                "checkpoints)")
        if keep is not None and keep < average:
            _refuse("trainer.save_total_limit", keep, f"null or at least trainer.average_last ({average}): the "
                                                      "checkpoints to average must be kept")
    best_set, sets = _get(cfg, "trainer.best_eval_set"), _get(cfg, "eval_sets")
    if best_set not in (_ABSENT, None) and best_set not in (sets if sets not in (_ABSENT, None) else {}):
        names = ", ".join(sets or {}) or "none: add one, e.g. +dataset@eval_sets.shifted=demo_en_shifted"
        _refuse("trainer.best_eval_set", best_set, f"null (the eval split) or the name of an eval set ({names})")
    if _get(cfg, "hub.push") is True and not _get(cfg, "hub.repo_id"):
        _refuse("hub.repo_id", _get(cfg, "hub.repo_id"), "a Hub repo id (owner/name) when hub.push=true")

    # Paths that must exist before anything is loaded.
    resume = _get(cfg, "trainer.resume")
    if resume not in (_ABSENT, None, "auto") and \
            not os.path.isfile(os.path.join(os.path.expanduser(resume), "trainer_state.json")):
        _refuse("trainer.resume", resume, "null, auto, or a complete checkpoint folder (checkpoints/step-N, with its "
                                          "trainer_state.json)")
    if _get(cfg, "dataset.source") == Source.audiofolder:
        path = _get(cfg, "dataset.path")
        if path and not os.path.isdir(os.path.expanduser(path)):
            _refuse("dataset.path", path, "an existing folder (audio files and metadata.csv) for dataset=audiofolder")
    # (their files are checked readable as training starts: speechkit/data/augment.py)
    for key, instead in (("augment.noise.path", "noise made on the fly"), ("augment.reverb.path", "simulated rooms")):
        folder, prob = _get(cfg, key), _get(cfg, key.rsplit(".", 1)[0] + ".prob")
        if isinstance(folder, str) and prob and not os.path.isdir(os.path.expanduser(folder)):
            _refuse(key, folder, f"null ({instead}) or an existing folder of audio files")
    text = _get(cfg, "task.decoder.text_file")
    if text not in (_ABSENT, None) and not os.path.isfile(os.path.expanduser(text)):
        _refuse("task.decoder.text_file", text, "null (the training transcripts) or an existing text file")
    vocab = _get(cfg, "task.vocab.path")
    if vocab not in (_ABSENT, None) and not os.path.isfile(os.path.expanduser(vocab)):
        _refuse("task.vocab.path", vocab, "null (build the vocab) or an existing vocab.json")
    if vocab not in (_ABSENT, None):
        _check_vocab_file(os.path.expanduser(vocab))
    name = _get(cfg, "model.name_or_path")
    if isinstance(name, str) and name.startswith(("/", "./", "../", "~")) and \
            not os.path.isdir(os.path.expanduser(name)):
        _refuse("model.name_or_path", name, "a Hub id or an existing local checkpoint folder")
    asr = _get(cfg, "asr_model_dir")  # diarize.py: who said what
    if isinstance(asr, str) and not is_hub_id(asr) and \
            not os.path.isfile(os.path.join(os.path.expanduser(asr), "config.json")):
        _refuse("asr_model_dir", asr, "null, or a saved speech recognition model (a run's model/ folder, or a Hub id)")
    model_dir = _get(cfg, "model_dir")
    if isinstance(model_dir, str):
        saved_model_dir(model_dir)
