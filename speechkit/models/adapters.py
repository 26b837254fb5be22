"""Adapters (conf/adapter): the model's own weights frozen, a few added weights trained with the task's head.

- `adapter=lora`: peft's LoRA, low-rank updates of the attention and feed-forward projections (each family names
  them: ModelFamily.lora_targets; adapter.target_modules overrides), injected into the model in place, so the model
  stays the transformers class the task runs; the head (what the task put on top of the pretrained model: lm_head,
  a classifier, Whisper's training-only CTC layer) trains in full, as peft's `modules_to_save`;
- `adapter=mms`: MMS's language adapters, transformers' own small layers in every wav2vec2 encoder layer
  (`adapter_attn_dim`), trained with the CTC head; they ship beside the model as `adapter.<language>.safetensors`,
  as the MMS checkpoints ship theirs, so `Wav2Vec2ForCTC.from_pretrained(model_dir, target_lang=language)` and
  `model.load_adapter(language)` find them;
- `adapter=none`: the model trains as it is (FullModel below).

What the trainer asks of these, and nothing else (speechkit/training/trainer.py):

    keep_in_checkpoints(acc)   accelerate's checkpoints hold (and load) an adapter run's trained weights only: the
                               rest is the base model, rebuilt the same at every start
    save_best(model, path, w)  checkpoints/best/: a model folder, or an adapter run's trained weights only
    load_best(model, folder)   best/'s weights back into the model
    fold(model)                before model/ is written: LoRA merged into the weights it updates; True when the model
                               changed (the trainer then scores it again: what ships is what was scored)
    save(model, path, weights) model/'s weights: whole (adapter.ship=merged), or the adapter and head alone
    describe()                 for the log and the schedule a resume must keep

A model folder shipped with adapter.ship=adapter holds no base weights; `load_shipped_adapter` rebuilds the model
from the base its card names (speechkit/models/__init__.py: load).
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import re
from typing import Dict, List, Optional, Set

from speechkit.config import AdapterConfig, AdapterKind, AdapterShip, ConfigError

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"  # peft's files of a LoRA shipped alone
PEFT_WEIGHTS = "adapter_model.safetensors"
MMS_WEIGHTS = "adapter.{}.safetensors"  # transformers' WAV2VEC2_ADAPTER_SAFE_FILE, as the MMS checkpoints name theirs
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
BEST_WEIGHTS = "model.safetensors"  # an adapter's trained weights in a checkpoint (accelerate's name) and in best/


def make(cfg: AdapterConfig, language: Optional[str] = None, base: Optional[str] = None) -> "FullModel":
    """The adapter conf/adapter chose; `language`: the data set's (MMS's adapter file is named by it), `base`: the
    pretrained checkpoint (model.name_or_path; None for a model built from scratch)."""
    if cfg.name == AdapterKind.none:
        return FullModel()
    if cfg.ship == AdapterShip.adapter and not base:
        raise ConfigError("adapter.ship=adapter: the model is built from scratch (model.name_or_path is null), so "
                          "there is no base model to load the adapter onto; ship it merged (adapter.ship=merged)")
    if cfg.name == AdapterKind.lora:
        return Lora(cfg)
    language = cfg.language or language
    if not language:
        raise ConfigError("adapter=mms: the adapter is saved under its language (adapter.<language>.safetensors); "
                          "set adapter.language (or dataset.language), e.g. adapter.language=spa")
    return MmsAdapter(cfg, language)


def count(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters trained ({100 * trainable / max(total, 1):.2f} %)"


class FullModel:
    """adapter=none: every weight the model trains is in the checkpoints, best/ is a model folder of its own."""

    def check(self, config, head: str, family) -> None:
        """Refuse, before any data is read, an adapter the model (its config, its `head`) cannot have."""

    def config_settings(self, config) -> dict:
        """What the model's config needs before the model is built."""
        return {}

    def attach(self, model, family) -> None:
        """After the model is built (its head new, its feature encoder frozen as model.* says)."""

    def describe(self) -> str:
        return "none"

    def keep_in_checkpoints(self, accelerator) -> None:
        """What accelerate's checkpoints hold of the model: all of it, as accelerate saves it."""

    def save_best(self, model, path: str, weights: Dict) -> None:
        """checkpoints/best/: a model folder of its own."""
        model.save_pretrained(path, state_dict=weights)

    def load_best(self, model, folder: str) -> None:
        best = type(model).from_pretrained(folder)
        missing, unexpected = model.load_state_dict(best.state_dict(), strict=False)
        trained_only = set(model._keys_to_ignore_on_save or ())  # weights that train but never ship
        if unexpected or set(missing) - trained_only:
            raise RuntimeError(f"{folder} does not match the model: missing {sorted(set(missing) - trained_only)}, "
                               f"unexpected {sorted(unexpected)}")

    def fold(self, model) -> bool:
        return False

    def save(self, model, path: str, weights: Dict) -> None:
        model.save_pretrained(path, state_dict=weights)


class _Adapter(FullModel):
    """What LoRA and MMS adapters share: the trained weights are all a checkpoint and best/ hold."""

    def __init__(self, cfg: AdapterConfig):
        self.cfg = cfg
        self.trained: Set[str] = set()  # the parameter names that train, as the model (and its state dict) names them

    def _trained_now(self, model) -> None:
        self.trained = {n for n, p in model.named_parameters() if p.requires_grad}
        log.info("Adapter %s: %s; model/ ships %s", self.describe(), count(model),
                 "the adapter alone (adapter.ship=adapter)" if self.cfg.ship == AdapterShip.adapter
                 else "whole weights (adapter.ship=merged)")

    def kept(self, weights: Dict) -> Dict:
        """`weights` (a state dict, keys as the model names them or as a DDP wrapper does: "module.") with the
        trained ones only, named as the model names them."""
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
        return {k: v for k, v in weights.items() if k in self.trained}

    def keep_in_checkpoints(self, accelerator) -> None:
        """accelerate's checkpoints (save_state/load_state) hold and restore the trained weights only: what the
        hooks of accelerate's model-state API are for."""

        def save_hook(models, weights, output_dir):
            for i in range(len(weights)):
                weights[i] = self.kept(weights[i])

        def load_hook(models, input_dir):
            for model in list(models):
                models.remove(model)  # loaded here, not by accelerate (which would want every weight)
                self.load_best(accelerator.unwrap_model(model), input_dir)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    def save_best(self, model, path: str, weights: Dict) -> None:
        """checkpoints/best/: the trained weights only, named as the model names them (as a checkpoint holds them;
        save_pretrained would write some under their original checkpoints' names)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.kept(weights).items()}, os.path.join(path, BEST_WEIGHTS))

    def load_best(self, model, folder: str) -> None:
        from safetensors.torch import load_file

        weights = load_file(os.path.join(folder, BEST_WEIGHTS))
        missing = sorted(set(self.trained) - set(weights))
        unexpected = sorted(set(weights) - set(self.trained))
        if missing or unexpected:
            raise RuntimeError(f"{folder} does not hold this adapter's weights: missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]} (was it trained with another conf/adapter?)")
        model.load_state_dict(weights, strict=False)


class Lora(_Adapter):
    def describe(self) -> str:
        c = self.cfg
        targets = "the family's" if c.target_modules is None else ",".join(c.target_modules)
        return f"lora (r={c.r}, alpha={c.alpha:g}, dropout={c.dropout:g}, targets={targets})"

    def _config(self, model, family):
        import peft
        from peft.tuners.tuners_utils import check_target_module_exists

        targets = list(self.cfg.target_modules) if self.cfg.target_modules is not None else family.lora_targets
        if not targets:
            raise ConfigError(f"adapter=lora: speechkit knows no attention or feed-forward projections of a "
                              f"{model.config.model_type} model; name them in adapter.target_modules")
        config = peft.LoraConfig(r=self.cfg.r, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout,
                                 target_modules=targets, modules_to_save=head_modules(model))
        if not any(check_target_module_exists(config, name) for name, _ in model.named_modules()):
            raise ConfigError(f"adapter.target_modules={targets}: no module of the {model.config.model_type} model "
                              f"is named so (its linear layers end in {', '.join(linear_names(model))})")
        return config

    def check(self, config, head: str, family) -> None:
        """The targets matched against the model's modules, built on torch's meta device (no memory, no weights)."""
        import torch

        from speechkit.models.base import auto_class

        config = copy.deepcopy(config)
        if getattr(config, "vocab_size", 0) is None:  # a head's size comes later (the task's); any will do here
            config.vocab_size = 2
        with torch.device("meta"):
            self._config(auto_class(head).from_config(config), family)

    def attach(self, model, family) -> None:
        import peft

        try:
            self.peft = peft.get_peft_model(model, self._config(model, family))  # in place: `model` still trains
        except ValueError as err:  # e.g. a target that is not a layer LoRA can update
            raise ConfigError(f"adapter.target_modules: {err}") from None
        self._trained_now(model)

    def fold(self, model) -> bool:
        if self.cfg.ship == AdapterShip.adapter:
            return False
        self.peft.merge_and_unload()  # in place: the plain transformers model with the updates in its weights
        log.info("LoRA merged into the weights it updates (adapter.ship=merged)")
        return True

    def save(self, model, path: str, weights: Dict) -> None:
        if self.cfg.ship == AdapterShip.merged:
            model.save_pretrained(path, state_dict=weights)
            return
        # adapter_config.json (naming the base) and the updates with the head; no embeddings (speech models)
        self.peft.save_pretrained(path, save_embedding_layers=False)
        save_config(model, path)


class MmsAdapter(_Adapter):
    def __init__(self, cfg: AdapterConfig, language: str):
        super().__init__(cfg)
        self.language = language

    def describe(self) -> str:
        return f"mms (attn_dim={self.cfg.attn_dim}, saved as {MMS_WEIGHTS.format(self.language)})"

    def check(self, config, head: str, family) -> None:
        if not hasattr(config, "adapter_attn_dim") or head != "ctc":
            raise ConfigError(f"adapter=mms: a {config.model_type} model with a {head} head has no MMS adapter "
                              "layers (transformers has them for wav2vec2 CTC models: wav2vec2-base, XLSR, MMS); use "
                              "adapter=lora")

    def config_settings(self, config) -> dict:
        return {"adapter_attn_dim": self.cfg.attn_dim}

    def attach(self, model, family) -> None:
        if not hasattr(model, "init_adapter_layers"):
            raise ConfigError(f"adapter=mms: a {type(model).__name__} has no MMS adapter layers (a CTC head has "
                              "them); use adapter=lora")
        model.init_adapter_layers()  # fresh for the new language, as MMS's own fine-tuning starts
        model.freeze_base_model()
        for p in model._get_adapters().values():  # the adapter layers and the CTC head
            p.requires_grad = True
        self._trained_now(model)

    def save(self, model, path: str, weights: Dict) -> None:
        from safetensors.torch import save_file

        if self.cfg.ship == AdapterShip.merged:
            model.save_pretrained(path, state_dict=weights)
        else:
            save_config(model, path)
        save_file({k: v.detach().contiguous().cpu() for k, v in model._get_adapters().items()},
                  os.path.join(path, MMS_WEIGHTS.format(self.language)), metadata={"format": "pt"})


def card_section(cfg: AdapterConfig, base: Optional[str], language: Optional[str], auto_class: str) -> str:
    """The model card's words on the adapter (empty for adapter=none): what trained, what model/ holds and, for an
    adapter shipped alone, how to load it onto its base with the stock libraries."""
    if cfg.name == AdapterKind.none:
        return ""
    adapter = make(cfg, language, base)
    text = f"## Adapter\n\nTrained as an adapter, the model's own weights frozen: {adapter.describe()}.\n"
    if cfg.ship == AdapterShip.merged:
        kept = "the LoRA updates merged into the weights" if cfg.name == AdapterKind.lora else \
            f"the whole model, and the adapter alone as `{MMS_WEIGHTS.format(adapter.language)}` " \
            f"(`{auto_class}.from_pretrained(this folder, target_lang=\"{adapter.language}\")` loads it)"
        return text + f"This folder holds {kept}: it loads as any model does.\n"
    if cfg.name == AdapterKind.lora:
        load = "model = PeftModel.from_pretrained(base, folder).merge_and_unload()"
        imports = f"from peft import PeftModel\nfrom transformers import AutoConfig, {auto_class}"
    else:
        load = (f"base.load_state_dict(load_file(f\"{{folder}}/{MMS_WEIGHTS.format(adapter.language)}\"), "
                "strict=False)\nmodel = base")
        imports = f"from safetensors.torch import load_file\nfrom transformers import AutoConfig, {auto_class}"
    return text + f"""This folder holds the adapter and the head alone (adapter.ship=adapter), to load onto `{base}`:

```python
{imports}

folder = "path/to/this/folder"
base = {auto_class}.from_pretrained("{base}", config=AutoConfig.from_pretrained(folder),
                                    ignore_mismatched_sizes=True)
{load}
```
"""


def save_config(model, path: str) -> None:
    """The model's config.json alone, naming its class (`architectures`) as save_pretrained would, and a generating
    model's generation config (Whisper's language and task)."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(path)


def head_modules(model) -> List[str]:
    """The model's own modules outside its pretrained body (transformers' base_model_prefix), with weights of their
    own: the head a task put on top (lm_head; projector and classifier; Whisper's training-only CTC layer), not a
    layer tied to the body's weights (Whisper's proj_out is its token embedding)."""
    body = getattr(model, model.base_model_prefix)
    in_body = {p.data_ptr() for p in body.parameters()}
    return [name for name, child in model.named_children() if child is not body
            and any(True for _ in child.parameters()) and not any(p.data_ptr() in in_body for p in child.parameters())]


def linear_names(model) -> List[str]:
    """The distinct last parts of the names of the model's linear layers (what adapter.target_modules can name)."""
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def shipped_alone(model_dir: str) -> Optional[str]:
    """What kind of adapter `model_dir` ships alone (adapter.ship=adapter: no base weights in it): "lora", "mms", or
    None for a folder of whole weights."""
    if any(os.path.isfile(os.path.join(model_dir, f)) for f in WEIGHT_FILES):
        return None
    if os.path.isfile(os.path.join(model_dir, PEFT_CONFIG)):
        return "lora"
    if glob.glob(os.path.join(model_dir, MMS_WEIGHTS.format("*"))):
        return "mms"
    return None


def load_shipped_adapter(model_dir: str, auto_class, kind: str):
    """A folder shipped with adapter.ship=adapter, as a whole model: its base (named by its card, as the Hub's
    `base_model`) built with the folder's config, then the adapter loaded onto it (LoRA merged in)."""
    from huggingface_hub import ModelCard
    from transformers import AutoConfig

    card = os.path.join(model_dir, "README.md")
    base = ModelCard.load(card).data.base_model if os.path.isfile(card) else None
    if not base:
        raise ConfigError(f"model_dir: {model_dir} holds an adapter alone, and no model card naming its base model "
                          "(README.md, base_model)")
    config = AutoConfig.from_pretrained(model_dir)
    model = auto_class.from_pretrained(base, config=config, ignore_mismatched_sizes=True)
    if os.path.isfile(os.path.join(model_dir, "generation_config.json")):  # the run's, not the base's
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    if kind == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    from safetensors.torch import load_file

    (file,) = glob.glob(os.path.join(model_dir, MMS_WEIGHTS.format("*")))
    missing = set(load_file(file)) - set(model.state_dict())
    if missing:
        raise ConfigError(f"model_dir: {file} does not fit {base} with this config: {sorted(missing)[:3]}")
    model.load_state_dict(load_file(file), strict=False)
    log.info("Loaded %s onto %s (adapter %s)", model_dir, base, re.sub(r"^adapter\.|\.safetensors$", "",
                                                                      os.path.basename(file)))
    return model
