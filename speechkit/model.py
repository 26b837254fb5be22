"""Model building (conf/model): a pretrained Wav2Vec2 with a fresh CTC head, or a small one from scratch."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from speechkit.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


REGULARISATION = ("attention_dropout", "hidden_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout",
                  "mask_time_prob", "layerdrop")


def _knobs(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> dict:
    """What the recipes tune, applied on top of whatever the checkpoint or architecture says (a knob left null keeps
    the checkpoint's value)."""
    return dict(
        **{k: getattr(cfg, k) for k in REGULARISATION if getattr(cfg, k) is not None},
        ctc_loss_reduction=cfg.ctc_loss_reduction,
        ctc_zero_infinity=cfg.ctc_zero_infinity,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,  # the CTC blank
    )


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> Wav2Vec2ForCTC:
    if cfg.name_or_path:
        log.info("Loading %s with a new %d-symbol CTC head", cfg.name_or_path, vocab_size)
        model = Wav2Vec2ForCTC.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, ignore_mismatched_sizes=True, **_knobs(cfg, vocab_size, pad_token_id)
        )
    else:
        arch = OmegaConf.to_container(cfg.architecture) if OmegaConf.is_config(cfg.architecture) else dict(cfg.architecture)
        known = Wav2Vec2Config().to_dict()
        unknown = sorted(k for k in arch if k not in known)
        if unknown:
            raise ConfigError(f"model.architecture: unknown Wav2Vec2Config field(s) {unknown}")
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**{**arch, **_knobs(cfg, vocab_size, pad_token_id)}))
        log.info("Built %s from scratch: %.2fM parameters", cfg.name, model.num_parameters() / 1e6)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        # transformers 5 name of gradient checkpointing. Non-reentrant (torch.utils.checkpoint's recommended mode,
        # also transformers' default, said here so no default change can break it): the reentrant one fails under
        # DDP with layerdrop ("Expected to mark a variable ready only once").
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model


def uses_attention_mask(model: Wav2Vec2ForCTC) -> bool:
    """Layer-norm feature encoders (XLSR, large) take an attention mask; group-norm ones (base) must not."""
    return model.config.feat_extract_norm == "layer"
