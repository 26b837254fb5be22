"""Hardware (conf/hw): turns the `hw` group into an `accelerate.Accelerator`; model code never branches on it."""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator

from speechkit.config import Backend, ConfigError, HardwareConfig, Precision

log = logging.getLogger(__name__)
# accelerate logs every file of every checkpoint at INFO; speechkit says once what it saved.
logging.getLogger("accelerate").setLevel(logging.WARNING)


def check_precision(hw: HardwareConfig) -> None:
    """Mixed precision is for accelerators; on the CPU we refuse fp16 rather than silently train in fp32."""
    if hw.backend == Backend.cpu and hw.mixed_precision == Precision.fp16:
        raise ConfigError("hw.mixed_precision=fp16 is not supported on hw=cpu: use hw.mixed_precision=no "
                          "(or bf16 if this CPU supports it)")


def make_accelerator(hw: HardwareConfig, gradient_accumulation_steps: int = 1) -> Accelerator:
    check_precision(hw)
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    accelerator = Accelerator(
        cpu=hw.backend == Backend.cpu,
        mixed_precision=hw.mixed_precision.value,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    log.info("Hardware: hw=%s on %s, mixed precision %s, %d process(es)", hw.backend.value, accelerator.device,
             hw.mixed_precision.value, accelerator.num_processes)
    return accelerator
