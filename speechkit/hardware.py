"""Hardware (conf/hw): resolves the `hw` group into an `accelerate.Accelerator`.

Model and training code never branch on the hardware: everything device-specific is decided here, from config,
and checked before any data is read: a backend this torch build or machine cannot run, or a precision the device
does not support, stops the run with a message saying what to change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType

from speechkit.config import Backend, ConfigError, HardwareConfig, Precision

log = logging.getLogger(__name__)
# accelerate logs every file of every checkpoint at INFO; speechkit says once what it saved.
logging.getLogger("accelerate").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Resolved:
    backend: Backend  # never auto
    precision: Precision  # never auto
    reason: str


def _torch_build() -> str:
    if torch.version.hip:
        return f"ROCm {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU-only"


def resolve(hw: HardwareConfig) -> Resolved:
    """Pick the backend and precision, refusing combinations this machine cannot run."""
    if hw.backend == Backend.sagemaker:
        raise ConfigError("hw=sagemaker is not a local device: it submits `python train.py` as a SageMaker training "
                          "job (and is the target of deploy.py); use hw=auto/cuda/rocm/cpu here")
    gpu = torch.cuda.is_available()  # ROCm builds of torch expose AMD GPUs through torch.cuda too
    backend, reason = hw.backend, "asked for"
    if backend == Backend.auto:
        if gpu and torch.version.hip:
            backend, reason = Backend.rocm, f"auto: AMD GPU {torch.cuda.get_device_name(0)} with a ROCm build of torch"
        elif gpu:
            backend, reason = Backend.cuda, f"auto: NVIDIA GPU {torch.cuda.get_device_name(0)}"
        else:
            backend, reason = Backend.cpu, f"auto: no GPU visible to this {_torch_build()} torch"
    elif backend == Backend.rocm:
        if not torch.version.hip:
            raise ConfigError(f"hw=rocm needs a ROCm build of torch, but this one is {_torch_build()} "
                              f"(torch {torch.__version__}, torch.version.hip is None). Install torch from the ROCm "
                              "wheel index (see docs/hardware.md) or use the Dockerfile.rocm image.")
        if not gpu:
            raise ConfigError("hw=rocm: this ROCm torch sees no AMD GPU (check /dev/kfd and /dev/dri access, "
                              "HIP_VISIBLE_DEVICES, and that the user is in the video/render groups)")
    elif backend == Backend.cuda:
        if torch.version.hip:
            raise ConfigError("hw=cuda on a ROCm build of torch: use hw=rocm (or hw=auto)")
        if not gpu:
            raise ConfigError(f"hw=cuda: no CUDA GPU is visible to this {_torch_build()} torch "
                              f"(torch {torch.__version__}); use hw=cpu or hw=auto")

    precision = hw.mixed_precision
    if precision == Precision.auto:
        precision = {Backend.cuda: Precision.fp16, Backend.rocm: Precision.bf16, Backend.cpu: Precision.no}[backend]
    if backend == Backend.cpu and precision == Precision.fp16:
        raise ConfigError("hw.mixed_precision=fp16 is not supported on the CPU: use hw.mixed_precision=no "
                          "(or bf16), or a GPU backend")
    if backend != Backend.cpu and precision == Precision.bf16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"hw.mixed_precision=bf16: {torch.cuda.get_device_name(0)} does not support bf16; use fp16")
    return Resolved(backend, precision, reason)


def loader_settings(accelerator: Accelerator, num_workers: Optional[int] = None, augmenting: bool = False) -> dict:
    """DataLoader settings for this device. On a GPU, worker processes make the next batches while it computes and
    put them in pinned (page-locked) memory, which copies to the device faster; on the CPU, workers would take cores
    from the model's own threads, and reading the decoded-audio cache is cheap, so batches are made in the main
    process, unless the clips are augmented (conf/augment): then one worker makes them while the model computes (on
    the demo the main process waited 11 % of the time for augmented batches, with one worker 2 %). A stream reads
    with one worker at most. `trainer.num_workers` overrides the count."""
    gpu = accelerator.device.type == "cuda"  # ROCm devices are "cuda" to torch too
    if num_workers is None:
        local_processes = max(1, torch.cuda.device_count()) if gpu else 1
        num_workers = min(4, max(1, (os.cpu_count() or 2) // local_processes - 1)) if gpu else int(augmenting)
    settings = {"num_workers": num_workers, "pin_memory": gpu}
    if num_workers:
        settings.update(prefetch_factor=4, persistent_workers=True)
    return settings


def optimizer_settings(accelerator: Accelerator) -> dict:
    """The fused AdamW kernel: one launch for all parameters on GPUs; on the CPU one pass over each parameter
    instead of a dozen elementwise ops (3.5x faster than torch's default there: 31 against 137 ms a step for
    wav2vec2-base)."""
    return {"fused": True} if accelerator.device.type in ("cuda", "cpu") else {}


def miopen_cache_dir(hw: HardwareConfig) -> str:
    """Where hw=rocm keeps MIOpen's tuned-kernel database: hw.miopen_cache_dir, else $SPEECHKIT_CACHE/miopen (the
    VOLUME of Dockerfile.rocm)."""
    return os.path.expanduser(hw.miopen_cache_dir or os.path.join(
        os.environ.get("SPEECHKIT_CACHE", "~/.cache/speechkit"), "miopen"))


def _join_slurm_job() -> None:
    """hydra/launcher=submitit_slurm starts one task (process) per GPU of a job; submitit's own helper turns SLURM's
    description of the job (SLURM_PROCID, SLURM_NTASKS, node list...) into the env:// variables torch.distributed,
    and so accelerate, reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Nothing to do outside a multi-task
    submitit job, or where a launcher (accelerate launch, torchrun) has already set them."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) < 2 \
            or "RANK" in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)  # cuda:LOCAL_RANK
    if env.rank == 0:
        log.info("SLURM job: %d processes, master %s:%d", env.world_size, env.master_addr, env.master_port)


def make_accelerator(hw: HardwareConfig, gradient_accumulation_steps: int = 1, log_with=None,
                     find_unused_parameters: bool = False, logging_dir: Optional[str] = None) -> Accelerator:
    """The Accelerator for this hardware. Under `accelerate launch` (several processes) it is DDP; then
    `find_unused_parameters` must be set when a step may leave parameters without a gradient (layerdrop skips whole
    layers at random), or DDP stops with "Expected to have finished reduction in the prior iteration".
    `logging_dir`: where a tracker that writes files (TensorBoard) writes them."""
    chosen = resolve(hw)
    _join_slurm_job()
    if chosen.backend == Backend.rocm:
        # MIOpen searches for the fastest convolution kernels on first use; keep its database across runs.
        cache = miopen_cache_dir(hw)
        os.makedirs(cache, exist_ok=True)
        os.environ.setdefault("MIOPEN_USER_DB_PATH", cache)
        os.environ.setdefault("MIOPEN_CUSTOM_CACHE_DIR", cache)
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    if chosen.backend == Backend.cuda and torch.cuda.get_device_capability(0) >= (8, 0):
        # Ampere and newer: fp32 matmuls and convolutions (the parts autocast leaves in fp32) on TF32 tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(
        cpu=chosen.backend == Backend.cpu,
        mixed_precision=chosen.precision.value,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_dir=logging_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        # Batches in pinned memory (loader_settings) are copied to the GPU asynchronously, overlapping compute.
        dataloader_config=DataLoaderConfiguration(non_blocking=chosen.backend != Backend.cpu),
    )
    if not accelerator.is_main_process:
        _main_process_logs_only()
    in_force, not_applied = distribution(accelerator)
    log.info("Hardware: %s (%s) on %s, mixed precision %s, %d process(es), distribution %s", chosen.backend.value,
             chosen.reason, accelerator.device, chosen.precision.value, accelerator.num_processes, in_force)
    if not_applied:
        log.warning(not_applied)
    return accelerator


_IN_FORCE = {"NO": "none (one process)", "MULTI_CPU": "DDP (data parallel on CPUs, gloo)",
             "MULTI_GPU": "DDP (data parallel)", "MULTI_XPU": "DDP (data parallel)", "FSDP": "FSDP (sharded)",
             "DEEPSPEED": "DeepSpeed"}


def distribution(accelerator: Accelerator) -> Tuple[str, Optional[str]]:
    """The distribution in force, and a sentence when the launch asked for another one (`accelerate launch
    --config_file accelerate/fsdp.yaml` sets ACCELERATE_USE_FSDP; deepspeed.yaml ACCELERATE_USE_DEEPSPEED) that
    accelerate did not apply, saying why and what it means for the checkpoints."""
    kind = accelerator.distributed_type.name
    in_force = _IN_FORCE.get(kind, kind)
    asked = next((name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
                  if os.environ.get(var, "").lower() in ("1", "true", "yes")), None)
    if asked is None or kind == asked.upper():
        return in_force, None
    why = (f"{asked} shards the training state across GPUs, and accelerate applies it on GPUs only (this run is on "
           f"{accelerator.device.type}{', hw=cpu' if accelerator.device.type == 'cpu' else ''})")
    return in_force, (f"The launch asked for {asked} (its accelerate config), but it is not applied: {why}. Training "
                      f"runs as {in_force}: every process holds the whole model, checkpoints hold full weights")


def shard_by_layer(accelerator: Accelerator, layers: Sequence[str], model_name: str) -> None:
    """Under FSDP (accelerate/fsdp.yaml), before the model is prepared: the layer classes FSDP shards one by one are
    the family's (`layers`: ModelFamily.layer_classes), unless the launch's accelerate config names its own
    (fsdp_transformer_layer_cls_to_wrap); the log names them. Nothing under any other distribution."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    wrapped = wrap_layers(accelerator.state.fsdp_plugin, layers)
    if wrapped is None:
        log.info("FSDP shards %s by its accelerate config's auto wrap policy (not by layer class)", model_name)
    else:
        log.info("FSDP shards %s layer by layer: %s%s", model_name, ", ".join(wrapped),
                 "" if list(wrapped) == list(layers) else " (named by the accelerate config)")


def wrap_layers(plugin, layers: Sequence[str]) -> Optional[List[str]]:
    """The layer classes an FSDP plugin (accelerate's FullyShardedDataParallelPlugin, as the launch's config made it)
    wraps: `layers` set where its policy wraps by layer class (TRANSFORMER_BASED_WRAP) and the config names none,
    else the config's own; None where it does not wrap by class."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = plugin.auto_wrap_policy
    if getattr(policy, "func", policy) is not transformer_auto_wrap_policy:
        return None
    if plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = list(layers)
    return list(plugin.transformer_cls_names_to_wrap)


def _main_process_logs_only() -> None:
    """Called in every process but the main one of a multi-process run: the run dir's train.log and the console
    get one copy of each line (the main process's); the others' warnings and errors still reach the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):  # Hydra's <run dir>/train.log, opened by every process
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
