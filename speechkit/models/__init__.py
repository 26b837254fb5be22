"""Models (conf/model): one module per family of architectures, each saying what speechkit needs to know of it
(the seam: speechkit/models/base.py), and the registry below that finds a model's family by its model type.

- wav2vec2.py   wav2vec2-like encoders over the raw waveform: wav2vec2, XLSR-53, MMS, HuBERT, WavLM
- w2v_bert.py   w2v-BERT 2.0, a conformer over filter banks
- whisper.py    Whisper, an encoder-decoder that generates tokens after a language and task prompt
- moonshine.py  Moonshine, an encoder-decoder over the raw waveform that generates tokens with no prompt
- ast.py        the Audio Spectrogram Transformer (classification)
- fast_paths.py the same model computed faster (trainer.fast_paths), applied where a family says

A new family is one module and one line in FAMILIES. Nothing here imports torch or transformers until a model is
built or loaded, so validation asks a family its heads in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Tuple

from speechkit.config import ConfigError, ModelConfig
from speechkit.models.ast import AudioSpectrogramTransformer
from speechkit.models.base import HEAD_NAMES, ModelFamily, ModelInputs, base_config, head_of  # noqa: F401
from speechkit.models.w2v_bert import W2vBert
from speechkit.models.wav2vec2 import Wav2Vec2Like
from speechkit.models.moonshine import Moonshine
from speechkit.models.whisper import Whisper

FAMILIES: Tuple[ModelFamily, ...] = (Wav2Vec2Like(), W2vBert(), Whisper(), Moonshine(), AudioSpectrogramTransformer())


def family_of(model_type: str) -> ModelFamily:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"model: speechkit has no family for model type '{model_type}' (it knows {', '.join(known)}; "
                      "a new one is a module in speechkit/models/)")


def model_type(cfg: ModelConfig) -> Optional[str]:
    """The model type, where it is known without imports: the config.json of a local checkpoint folder, or the
    architecture's `model_type` (a conf/model option states its checkpoint's layout there); None for a Hub
    checkpoint of no stated type (checked when its config is read, still before any data)."""
    name = cfg.name_or_path
    if isinstance(name, str) and os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
        with open(os.path.join(os.path.expanduser(name), "config.json")) as f:
            return json.load(f).get("model_type")
    arch = cfg.architecture if hasattr(cfg.architecture, "get") else {}
    if name is None:
        return arch.get("model_type", "wav2vec2")
    return arch.get("model_type")


def model_config(cfg: ModelConfig, heads: Iterable[str], task: str = ""):
    """(the model's config (no weights), the first of `heads` (a task's, in its order) the model can have, its
    family); refused, naming the model and `task`, when it has none of them. Checked before any data is read."""
    config = base_config(cfg)
    family = family_of(config.model_type)
    for head in heads:
        if family.has_head(config.model_type, head):
            return config, head, family
    raise _no_head(cfg, config, family, heads, task)


def build_model(cfg: ModelConfig, head: str, specaugment=None, adapter=None, bound: Optional[tuple] = None,
                **head_config):
    """The model with a fresh `head` (head_config: its size, labels ...), as training builds it (a task's
    build_model calls this): speechkit/models/base.py's build, with SpecAugment's masks (`specaugment`:
    augment.specaugment) and what `adapter` needs of the config (conf/adapter, attached by the caller once what the
    task adds is there). `bound`: (config, family) the run has read already."""
    config, family = bound or (base_config(cfg), None)
    family = family or family_of(config.model_type)
    if not family.has_head(config.model_type, head):
        raise _no_head(cfg, config, family, [head])
    return family.build(cfg, config, head, specaugment, adapter, **head_config)


def _no_head(cfg: ModelConfig, config, family: ModelFamily, heads: Iterable[str], task: str = "") -> ConfigError:
    has = [HEAD_NAMES[h] for h in HEAD_NAMES if family.has_head(config.model_type, h)]
    return ConfigError(f"model={cfg.name} ({config.model_type}) has no {' or '.join(HEAD_NAMES[h] for h in heads)} "
                       f"head, so it cannot do {f'task={task}' if task else 'this task'} (its heads: "
                       f"{', '.join(has) or 'none'})")


def load(model_dir: str):
    """(model, its head) of a saved model: a run's model/, or a Hub id; a folder that ships an adapter alone
    (adapter.ship=adapter) is loaded onto the base model its card names (speechkit/models/adapters.py)."""
    from transformers import AutoConfig

    from speechkit.models import adapters
    from speechkit.models.base import auto_class

    config = AutoConfig.from_pretrained(model_dir)
    head = head_of(config)
    if head is None:
        raise ConfigError(f"model_dir: {model_dir} holds a {config.architectures or 'model of no known architecture'}"
                          "; speechkit scores CTC and sequence-to-sequence (speech recognition), "
                          "audio-classification and frame-classification (diarization) models")
    alone = adapters.shipped_alone(model_dir)
    if alone:
        return adapters.load_shipped_adapter(model_dir, auto_class(head), alone), head
    return family_of(config.model_type).load(model_dir, head), head
