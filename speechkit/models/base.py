"""Model building (conf/model): a pretrained checkpoint or a small architecture from scratch, with the head the task
asks for (a CTC head over characters, or a classification head), and the feature extractor that goes with it.

Families: wav2vec2 (also XLSR; CTC or sequence-classification head) and ast (Audio Spectrogram Transformer;
classification only). A pretrained checkpoint says its family in its config; a random-init architecture says it with
`model_type` (wav2vec2 when absent; audio-spectrogram-transformer for AST).
"""

from __future__ import annotations

import logging

from omegaconf import OmegaConf
from transformers import (AutoConfig, AutoModelForAudioClassification, AutoModelForAudioFrameClassification,
                          AutoModelForCTC, ASTFeatureExtractor, AutoFeatureExtractor, PretrainedConfig, PreTrainedModel,
                          Wav2Vec2FeatureExtractor)
from transformers.models.auto.modeling_auto import (MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES,
                                                    MODEL_FOR_CTC_MAPPING_NAMES)

from speechkit.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

HEADS = {"ctc": AutoModelForCTC, "classification": AutoModelForAudioClassification,
         "frames": AutoModelForAudioFrameClassification}  # frames: one output per speaker and frame (diarization)
REGULARISATION = ("attention_dropout", "hidden_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout",
                  "mask_time_prob", "layerdrop")


def _base_config(cfg: ModelConfig) -> PretrainedConfig:
    """The checkpoint's config (read from the Hub or the folder, no weights) or the architecture's."""
    if cfg.name_or_path:
        return AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    arch = OmegaConf.to_container(cfg.architecture) if OmegaConf.is_config(cfg.architecture) else dict(cfg.architecture)
    model_type = arch.pop("model_type", "wav2vec2")
    try:
        known = AutoConfig.for_model(model_type).to_dict()
    except ValueError:
        raise ConfigError(f"model.architecture.model_type: unknown model type '{model_type}'") from None
    unknown = sorted(k for k in arch if k not in known)
    if unknown:
        raise ConfigError(f"model.architecture: unknown {type(AutoConfig.for_model(model_type)).__name__} field(s) "
                          f"{unknown}")
    return AutoConfig.for_model(model_type, **arch)


def _knobs(cfg: ModelConfig, config: PretrainedConfig) -> dict:
    """What the recipes tune, applied on top of whatever the checkpoint or architecture says (a knob left null keeps
    the checkpoint's value); a knob the family does not have is refused rather than ignored."""
    knobs = {k: getattr(cfg, k) for k in REGULARISATION if getattr(cfg, k) is not None}
    absent = sorted(k for k in knobs if not hasattr(config, k))
    if absent:
        raise ConfigError(f"model.{absent[0]}: a {config.model_type} model has no such setting; leave it null")
    return knobs


def model_config(cfg: ModelConfig, head: str) -> PretrainedConfig:
    """The model's config (no weights), refused when its family has no such `head` ("ctc" or "classification"):
    checked before any data is read."""
    config = _base_config(cfg)
    if head == "ctc" and config.model_type not in MODEL_FOR_CTC_MAPPING_NAMES:
        raise ConfigError(f"model={cfg.name} ({config.model_type}) has no CTC head, so it cannot do task=asr; "
                          "use it with task=audio_classification")
    if head == "frames" and config.model_type not in MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(f"model={cfg.name} ({config.model_type}) has no frame-level head, so it cannot do "
                          "task=diarization; use a wav2vec2 model")
    return config


def build_model(cfg: ModelConfig, head: str, **head_config) -> PreTrainedModel:
    """The model with a fresh `head`: "ctc" (head_config: vocab_size, pad_token_id) or "classification" (num_labels,
    id2label, label2id, problem_type)."""
    config = model_config(cfg, head)
    if head == "ctc":
        head_config.update(ctc_loss_reduction=cfg.ctc_loss_reduction, ctc_zero_infinity=cfg.ctc_zero_infinity)
    settings = {**_knobs(cfg, config), **head_config}
    if cfg.name_or_path:
        log.info("Loading %s with a new %s head", cfg.name_or_path, head)
        model = HEADS[head].from_pretrained(cfg.name_or_path, revision=cfg.revision, ignore_mismatched_sizes=True,
                                            **settings)
    else:
        for key, value in settings.items():
            setattr(config, key, value)
        model = HEADS[head].from_config(config)
        log.info("Built %s from scratch: %.2fM parameters", cfg.name, model.num_parameters() / 1e6)
    if cfg.freeze_feature_encoder:
        if not hasattr(model, "freeze_feature_encoder"):
            raise ConfigError(f"model.freeze_feature_encoder=true: a {config.model_type} model has no feature "
                              "encoder to freeze; set it false")
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        # transformers 5 name of gradient checkpointing. Non-reentrant (torch.utils.checkpoint's recommended mode,
        # also transformers' default, said here so no default change can break it): the reentrant one fails under
        # DDP with layerdrop ("Expected to mark a variable ready only once").
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model


def uses_attention_mask(model: PreTrainedModel) -> bool:
    """Layer-norm feature encoders (XLSR, large) take an attention mask; group-norm ones (base) must not; AST's
    spectrogram input is always one fixed-size window."""
    return getattr(model.config, "feat_extract_norm", None) == "layer"


def receptive_field(config: PretrainedConfig, sampling_rate: int) -> int:
    """The shortest clip the model can take: the receptive field of wav2vec2's convolutions (400 samples for the
    released ones), one 25 ms frame of AST's filter bank."""
    if hasattr(config, "conv_kernel"):
        field, hop = config.conv_kernel[0], config.conv_stride[0]
        for kernel, stride in zip(config.conv_kernel[1:], config.conv_stride[1:]):
            field, hop = field + (kernel - 1) * hop, hop * stride
        return field
    return int(0.025 * sampling_rate)


def feature_extractor_for(model: PreTrainedModel, cfg: ModelConfig):
    """What turns a clip into the model's input, saved beside the weights: AST's filter bank (the checkpoint's own
    settings, or the architecture's mel bins and window), or wav2vec2's per-utterance normalisation."""
    if model.config.model_type == "audio-spectrogram-transformer":
        if cfg.name_or_path:
            return AutoFeatureExtractor.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        return ASTFeatureExtractor(sampling_rate=cfg.sampling_rate, num_mel_bins=model.config.num_mel_bins,
                                   max_length=model.config.max_length)
    # Models with layer-norm feature encoders (XLSR) want the attention mask, group-norm ones (wav2vec2-base) were
    # trained on plain zero padding.
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=cfg.sampling_rate, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=uses_attention_mask(model))


def input_window_samples(feature_extractor) -> int | None:
    """The longest clip the feature extractor passes on whole (AST: max_length frames of 10 ms); None: any length."""
    frames = getattr(feature_extractor, "max_length", None)
    if frames is None or not isinstance(feature_extractor, ASTFeatureExtractor):
        return None
    return int(frames * feature_extractor.sampling_rate // 100)
