"""The model-family seam: what speechkit needs to know of a family of architectures, said once per family.

A family (speechkit/models/<family>.py) covers some of transformers' model types and answers, for a model of one:

- which heads it can have ("ctc", "classification", "frames", "seq2seq"; the Auto class serving each is
  transformers' own, HEADS below, from speechkit/inference/heads.py), built from a pretrained checkpoint or from an
  architecture with random weights;
- what turns a clip into its input: a pretrained checkpoint's own feature extractor (its preprocessor_config.json,
  from its folder or the Hub), else the family's class with the family's settings; `inputs()` pads a batch with it;
- its lengths: the shortest clip it takes (receptive field), samples per output frame, output frames of a clip
  (output_frames) and of each clip of a batch from its attention mask (output_lengths, what CTC decoding masks by);
- the processor a CTC model ships with (a tokenizer and that feature extractor), which inference loads back;
- which of speechkit's fast paths apply (speechkit/models/fast_paths.py).

The base class holds what every family shares; a family overrides what differs. Modules here import transformers
only inside methods: the validation of a config (speechkit/validation.py) asks a family its heads before torch is
imported.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

from omegaconf import OmegaConf

from speechkit.config import ConfigError, ModelConfig, first_line
from speechkit.inference.heads import HEADS as TABLE

log = logging.getLogger(__name__)

# head -> (transformers' Auto class, transformers' list of the model types that have it): the first two columns of
# the one table of heads, speechkit/inference/heads.py, whose third (the pipeline serving a head) the handler reads
HEADS = {head: (auto, mapping) for head, (auto, mapping, _pipeline) in TABLE.items()}
HEAD_NAMES = {"ctc": "CTC", "classification": "classification", "frames": "frame-level",
              "seq2seq": "sequence-to-sequence"}  # for messages
REGULARISATION = ("attention_dropout", "hidden_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout",
                  "mask_time_prob", "layerdrop")


def auto_class(head: str):
    import transformers

    return getattr(transformers, HEADS[head][0])


def architectures_of(head: str) -> dict:
    """transformers' own {model_type: class name} of the models that have `head`."""
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, HEADS[head][1])


def head_of(config) -> Optional[str]:
    """The head a saved model's config says it has (its `architectures`), or None."""
    for head in HEADS:
        if set(config.architectures or ()) & set(architectures_of(head).values()):
            return head
    return None


def base_config(cfg: ModelConfig):
    """The checkpoint's config (read from the Hub or the folder, no weights) or the architecture's."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    if cfg.name_or_path:
        return AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    arch = OmegaConf.to_container(cfg.architecture) if OmegaConf.is_config(cfg.architecture) else dict(cfg.architecture)
    model_type = arch.pop("model_type", "wav2vec2")
    try:
        default = AutoConfig.for_model(model_type)
    except ValueError:
        raise ConfigError(f"model.architecture.model_type: unknown model type '{model_type}'") from None
    known, kind = default.to_dict(), type(default).__name__
    unknown = sorted(k for k in arch if k not in known)
    if unknown:
        raise ConfigError(f"model.architecture: unknown {kind} field(s) {unknown}")
    try:
        return AutoConfig.for_model(model_type, **arch)
    except (ValueError, TypeError, StrictDataclassError) as err:  # fields that do not fit together
        cause = err.__cause__ or err
        raise ConfigError(f"model.architecture: not a valid {kind} "
                          f"({first_line(cause, type(cause).__name__, limit=400)})") from None


class ModelInputs:
    """Clips to a batch of the model's input, padded as the family's feature extractor pads them, and what of that
    batch goes into the model's forward: its main input (`input_values` of a waveform, `input_features` of a filter
    bank) and, where the model was trained with one, the attention mask. `window`: a fixed input window in samples
    (AST's filter bank is cut or padded to it), or None. The sizes the trainer's throughput figures count stay plain
    numbers: `audio_samples` (real audio the model sees) and `padded_samples` (what it is fed, padding counted)."""

    def __init__(self, feature_extractor, pass_attention_mask: bool, window: Optional[int] = None):
        self.feature_extractor = feature_extractor
        self.pass_attention_mask = pass_attention_mask
        self.window = window
        self.name = feature_extractor.model_input_names[0]

    def __call__(self, clips) -> dict:
        fe = self.feature_extractor
        if self.window:
            features = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
            seen, padded = [min(len(c), self.window) for c in clips], self.window * len(clips)
        else:
            features = fe(clips, sampling_rate=fe.sampling_rate, padding=True,
                          return_attention_mask=True,  # always: normalisation must ignore the padding
                          return_tensors="pt")
            seen, padded = [len(c) for c in clips], max(len(c) for c in clips) * len(clips)
        batch = {self.name: features[self.name], "audio_samples": sum(seen), "padded_samples": padded}
        if "attention_mask" in features:  # kept for output lengths even where the model does not take it
            batch["attention_mask"] = features["attention_mask"]
        return batch

    def mask(self, batch: dict, draws: List[tuple]) -> None:
        """A training batch's input masked in place (SpecAugment where the family masks its input: AST), each clip
        from its own (seed, epoch, row); nothing by default."""

    def model_inputs(self, batch: dict) -> dict:
        inputs = {self.name: batch[self.name]}
        if self.pass_attention_mask and "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"]
        return inputs


class ModelFamily:
    name: str = ""  # for messages and the README
    model_types: Tuple[str, ...] = ()  # transformers' model_type values it covers
    heads: Tuple[str, ...] = ()  # the heads it can have (a model type may lack some: transformers' lists decide)
    processor: str = "Wav2Vec2Processor"  # the transformers class a CTC model's tokenizer and features ship as
    has_feature_encoder: bool = False  # a convolutional encoder model.freeze_feature_encoder can freeze
    has_encoder: bool = False  # an encoder-decoder model: model.freeze_encoder trains the decoder only
    onnx_refused: str = ""  # why export.py cannot export this family yet ("": it can)
    # adapter=lora: the attention and feed-forward projections that get low-rank updates, as a regular expression
    # peft matches against each module's full name ("": none known; adapter.target_modules names them)
    lora_targets: str = ""
    language_adapter_types: Tuple[str, ...] = ()  # adapter=mms: the model types with MMS's adapter layers
    input_class: type = ModelInputs  # what turns clips into the model's input (inputs() builds it)

    # ------------------------------------------------------------------------------------------- building
    def has_head(self, model_type: str, head: str) -> bool:
        return head in self.heads and model_type in architectures_of(head)

    def build(self, cfg: ModelConfig, config, head: str, specaugment=None, adapter=None, **head_config):
        """The model with a fresh `head` (head_config: its size, labels ...), the recipe's knobs and SpecAugment's
        masks (augment.specaugment, where the model masks its own features) set on the checkpoint's (or the
        architecture's) config with what `adapter` needs there (speechkit/models/adapters.py), the feature encoder
        frozen and gradient checkpointing on as model.* says."""
        settings = {**self._knobs(cfg, config), **self.spec_augment(config, specaugment), **head_config}
        if adapter is not None:
            settings.update(adapter.config_settings(config))
        if cfg.name_or_path:
            log.info("Loading %s with a new %s head", cfg.name_or_path, head)
            model = auto_class(head).from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                     ignore_mismatched_sizes=True, **settings)
        else:
            for key, value in settings.items():
                setattr(config, key, value)
            model = auto_class(head).from_config(config)
            log.info("Built %s from scratch: %.2fM parameters", cfg.name, model.num_parameters() / 1e6)
        if cfg.freeze_feature_encoder:
            if not self.has_feature_encoder:
                raise ConfigError(f"model.freeze_feature_encoder=true: a {config.model_type} model has no "
                                  "convolutional feature encoder to freeze; set it false")
            model.freeze_feature_encoder()
        if cfg.freeze_encoder:
            if not self.has_encoder:
                raise ConfigError(f"model.freeze_encoder=true: a {config.model_type} model is no encoder-decoder; "
                                  "set it false (model.freeze_feature_encoder freezes a convolutional front end)")
            self.freeze_encoder(model)
        if cfg.gradient_checkpointing:
            # transformers 5 name of gradient checkpointing. Non-reentrant (torch.utils.checkpoint's recommended mode,
            # also transformers' default, said here so no default change can break it): the reentrant one fails
            # under DDP with layerdrop ("Expected to mark a variable ready only once").
            model.activation_checkpointing_enable({"use_reentrant": False})
        return model

    @staticmethod
    def _knobs(cfg: ModelConfig, config) -> dict:
        """What the recipes tune, applied on top of whatever the checkpoint or architecture says (a knob left null
        keeps the checkpoint's value), and model.config_overrides; a setting the model does not have is refused
        rather than ignored."""
        knobs = {k: getattr(cfg, k) for k in REGULARISATION if getattr(cfg, k) is not None}
        absent = sorted(k for k in knobs if not hasattr(config, k))
        if absent:
            raise ConfigError(f"model.{absent[0]}: a {config.model_type} model has no such setting; leave it null")
        overrides = OmegaConf.to_container(cfg.config_overrides) if OmegaConf.is_config(cfg.config_overrides) \
            else dict(cfg.config_overrides)
        absent = sorted(k for k in overrides if not hasattr(config, k))
        if absent:
            raise ConfigError(f"model.config_overrides.{absent[0]}: a {config.model_type} model's config has no such "
                              "field")
        return {**knobs, **overrides}

    def spec_augment(self, config, spec) -> dict:
        """augment.specaugment (SpecAugmentConfig) as the model's own config settings: wav2vec2-like encoders,
        w2v-BERT and Whisper mask time steps and feature channels themselves (mask_time_*, mask_feature_*; Whisper
        only with apply_spec_augment). A family that masks its input instead (AST) returns none here and masks in
        `inputs`."""
        if spec is None or not spec.enabled:
            return {}
        settings = {"mask_time_prob": spec.time_prob, "mask_time_length": spec.time_length,
                    "mask_feature_prob": spec.feature_prob, "mask_feature_length": spec.feature_length}
        settings = {k: v for k, v in settings.items() if v is not None}
        if hasattr(config, "apply_spec_augment"):
            settings["apply_spec_augment"] = True
        absent = sorted(k for k in settings if not hasattr(config, k))
        if absent:
            raise ConfigError(f"augment.specaugment: a {config.model_type} model has no {absent[0]} setting; "
                              "use augment=none or another model")
        return settings

    def load(self, model_dir: str, head: str):
        """A saved model (a run's model/, or a Hub id) with its head."""
        return auto_class(head).from_pretrained(model_dir)

    # ------------------------------------------------------------------------------------ what it is fed
    def feature_extractor(self, config, cfg: ModelConfig):
        """What turns a clip into the model's input, saved beside the weights: a pretrained checkpoint's own (its
        preprocessor_config.json), else the family's (new_feature_extractor)."""
        own = None
        if cfg.name_or_path:
            from transformers import AutoFeatureExtractor
            from transformers.utils import cached_file

            # None where the checkpoint has no preprocessor_config.json (many pretraining-only ones leave the
            # features to their users); a network or permission error still says so
            if cached_file(cfg.name_or_path, "preprocessor_config.json", revision=cfg.revision,
                           _raise_exceptions_for_missing_entries=False):
                own = AutoFeatureExtractor.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        if own is None:
            return self.new_feature_extractor(config, cfg.sampling_rate)
        if own.sampling_rate != cfg.sampling_rate:
            raise ConfigError(f"model.sampling_rate={cfg.sampling_rate}: {cfg.name_or_path} takes audio at "
                              f"{own.sampling_rate} Hz (its preprocessor_config.json); set model.sampling_rate="
                              f"{own.sampling_rate}")
        return own

    def new_feature_extractor(self, config, sampling_rate: int):
        raise NotImplementedError

    def inputs(self, config, feature_extractor, specaugment=None) -> ModelInputs:
        """What turns clips into the model's input; `specaugment`: a training run's augment.specaugment, for a
        family that masks its input features (AST)."""
        return self.input_class(feature_extractor, self.uses_attention_mask(config),
                                self.input_window(feature_extractor))

    def uses_attention_mask(self, config) -> bool:
        """Whether the model is given the attention mask (some were trained on plain zero padding without one)."""
        return True

    def input_window(self, feature_extractor) -> Optional[int]:
        """The longest clip (samples) the feature extractor passes on whole; None: any length."""
        return None

    def longest_clip(self, config, sampling_rate: int) -> Optional[int]:
        """The longest clip (samples) the model can be trained on and scored with whole (dropped and reported when
        longer); None: any length (a longer one is cropped where the task crops, as AST's classification does)."""
        return None

    def freeze_encoder(self, model) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- its lengths
    def receptive_field(self, config, sampling_rate: int) -> int:
        """The shortest clip (samples) the model can take."""
        raise NotImplementedError

    def input_lengths(self, config, sampling_rate: int, longest_s: float) -> Tuple[int, int]:
        """(shortest, longest) of the length axis of the model's main input (axis 1), for clips from the receptive
        field to `longest_s` seconds: samples, for a waveform encoder (what an ONNX export's dynamic axis spans)."""
        return self.receptive_field(config, sampling_rate), int(longest_s * sampling_rate)

    def frame_hop(self, config) -> int:
        """Samples of audio per output frame."""
        return int(config.inputs_to_logits_ratio)

    def output_frames(self, config, samples: int, sampling_rate: int) -> int:
        """The output frames of a clip of `samples` at `sampling_rate` (in a padded batch, those its attention mask
        covers)."""
        raise NotImplementedError

    def output_lengths(self, config, input_lengths):
        """The output frames of each clip of a batch (a tensor of integers), from `input_lengths`, the lengths its
        attention mask covers (`batch["attention_mask"].sum(-1)`, the batch `inputs()` made): samples for a waveform
        encoder, input frames for a filter-bank one (w2v-BERT). The model's own length arithmetic, said by the family
        (CTC decoding masks the frames past each clip's with it), equal to output_frames clip by clip."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ speech recognition
    def make_processor(self, tokenizer, feature_extractor):
        """The processor a speech recognition model ships with: its tokenizer and feature extractor, as the stock
        pipeline and load_processor read them back."""
        import transformers

        return getattr(transformers, self.processor)(feature_extractor=feature_extractor, tokenizer=tokenizer)

    def load_processor(self, model_dir: str):
        import transformers

        return getattr(transformers, self.processor).from_pretrained(model_dir)

    # --------------------------------------------- generation (speechkit/kinds/generation/): a decoder writes the text
    prompt_language: bool = False  # its prompt names the transcripts' language: dataset.language is required
    prompt_tokens: int = 1  # the decoder's tokens before the transcript: its start, and the family's prompt after it
    timestamp_s: float = 0.0  # seconds per timestamp token, where the family predicts timestamps

    def decoder_positions(self, config) -> int:
        """The most tokens the decoder takes, its prompt's included."""
        return config.max_position_embeddings

    def new_tokenizer(self, texts: List[str], config):
        """A tokenizer for a model built from scratch, made from the training transcripts `texts`, saved as the
        family's stock tokenizer class saves it."""
        raise NotImplementedError

    def new_head_config(self, tokenizer) -> dict:
        """A from-scratch decoder's vocabulary and special tokens, from `tokenizer`."""
        end = tokenizer.eos_token_id
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id
                is not None else end, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": end,
                "decoder_start_token_id": tokenizer.bos_token_id}

    def kept_head_config(self, config) -> dict:
        """What a pretrained decoder's config needs for training that its checkpoint may lack (none by default)."""
        return {}

    def set_prompt(self, tokenizer, language: Optional[str], task: str) -> None:
        """The tokenizer's prompt before each transcript (Whisper's language and task tokens); none by default."""

    def describe_prompt(self, language: Optional[str], task: str, short: bool = False) -> str:
        """The prompt in words, for the log (`short`) and the decoder's name."""
        return "no prompt"

    def generation_config(self, model, tokenizer, language: Optional[str], task: str, pretrained: bool):
        """What generate() is given: a pretrained checkpoint's own generation config, else one of the tokenizer's
        special tokens."""
        from transformers import GenerationConfig

        if pretrained:
            return model.generation_config
        config = model.config
        return GenerationConfig(decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
                                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                max_length=self.decoder_positions(config))

    def timestamp_begin(self, generation_config) -> Optional[int]:
        """The id of the first timestamp token, where the model predicts timestamps; None where it does not."""
        return None

    # ------------------------------------------------------------------------------------------ ONNX export
    def exportable(self, model):
        """A context in which `model` traces for ONNX export (speechkit/onnx_export.py): as it is by default."""
        import contextlib

        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ sharding
    def layer_classes(self, model) -> List[str]:
        """The class names of the model's repeated blocks, each one unit FSDP shards and gathers in turn (accelerate's
        fsdp_transformer_layer_cls_to_wrap; speechkit/hardware.py: shard_by_layer): the items of every module list
        named `layers` (a wav2vec2-like, w2v-BERT or Whisper encoder's and decoder's layers, an adapter's) or `layer`
        (AST's). Read off the model, so each model type and variant (wav2vec2's stable-layer-norm layers, HuBERT's,
        WavLM's) names its own; transformers' `_no_split_modules`, accelerate's default, names none for wav2vec2 or
        WavLM."""
        import torch

        names = set()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "layer"):
                names.update(type(item).__name__ for item in module)
        return sorted(names)

    # ------------------------------------------------------------------------------------------ fast paths
    def fast_paths(self, model, device) -> list:
        """Switch `model` (in place) to the fast paths that fit it; what was switched, for the log."""
        from speechkit.models import fast_paths

        return fast_paths.apply(model, device, time_major=False)
