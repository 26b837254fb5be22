"""The optimizer (trainer.optimizer) and the learning-rate schedule (trainer.scheduler), each built from its library's
own implementation: torch's AdamW and Adafactor, bitsandbytes' 8-bit AdamW, transformers' warmup schedules.

Weight decay never applies to biases and layer norms (both recipes' Trainer did the same). A schedule is a LambdaLR
stepped once per optimizer step; it and the optimizer are saved in every checkpoint (accelerate's state), so a
resumed run goes on with the very learning rate and moments of an uninterrupted one.
"""

from __future__ import annotations

import torch

from speechkit.config import ConfigError, OptimizerName, SchedulerName, TrainerConfig

NO_DECAY = ("bias", "layer_norm.weight", "layernorm.weight")


def make_optimizer(cfg: TrainerConfig, model: torch.nn.Module, settings: dict) -> torch.optim.Optimizer:
    """`settings`: the device's (hardware.optimizer_settings: the fused AdamW kernel where there is one)."""
    params = [p for p in model.named_parameters() if p[1].requires_grad]
    groups = [{"params": [p for n, p in params if not n.endswith(NO_DECAY)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in params if n.endswith(NO_DECAY)], "weight_decay": 0.0}]
    if cfg.optimizer == OptimizerName.adamw:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 eps=cfg.adam_epsilon, **settings)
    if cfg.optimizer == OptimizerName.adafactor:
        # torch's own: factored second moments, no first moment, an explicit learning rate (no relative step)
        return torch.optim.Adafactor(groups, lr=cfg.learning_rate)
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("trainer.optimizer=adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(f"trainer.optimizer=adamw_8bit: bitsandbytes' 8-bit optimizers run on CUDA GPUs, not on "
                          f"{device.type}; use trainer.optimizer=adamw or adafactor")
    return bitsandbytes.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                        eps=cfg.adam_epsilon)


def make_scheduler(cfg: TrainerConfig, optimizer: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule warms up linearly for trainer.warmup_steps (at most all the steps), then: linear decay to 0,
    a half cosine to 0, constant, or the tri-stage hold and linear decay (transformers' warmup-stable-decay)."""
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup, get_wsd_schedule)

    warmup = min(cfg.warmup_steps, total_steps)
    if cfg.scheduler == SchedulerName.linear:
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.scheduler == SchedulerName.cosine:
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.scheduler == SchedulerName.constant:
        return get_constant_schedule_with_warmup(optimizer, warmup)
    hold = min(round(cfg.tri_stage.hold_ratio * total_steps), total_steps - warmup)
    return get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_stable_steps=hold,
                            num_decay_steps=total_steps - warmup - hold, warmup_type="linear", decay_type="linear",
                            min_lr_ratio=cfg.tri_stage.final_lr_ratio)
