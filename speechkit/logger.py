"""Experiment tracking (conf/logger), through accelerate's trackers so every process logs correctly."""

from __future__ import annotations

import logging
import os
from typing import Optional

from accelerate import Accelerator

from speechkit.config import ConfigError, LoggerBackend, LoggerConfig

log = logging.getLogger(__name__)


def tracker_name(cfg: LoggerConfig) -> Optional[str]:
    """What to pass as Accelerator(log_with=...)."""
    if cfg.backend == LoggerBackend.none:
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package: pip install 'speechkit[wandb]'") from None
    return "wandb"


def start(cfg: LoggerConfig, accelerator: Accelerator, public_config: dict, run_dir: str) -> None:
    """Open the run; `public_config` is the resolved config with secrets already redacted."""
    if cfg.backend == LoggerBackend.none:
        return
    name = cfg.name or os.path.basename(os.path.normpath(run_dir))
    accelerator.init_trackers(cfg.project, config=public_config, init_kwargs={
        "wandb": {"entity": cfg.entity, "name": name, "tags": list(cfg.tags), "dir": run_dir}})
    log.info("Logging to Weights & Biases: project %s, run %s (mode: %s)", cfg.project, name,
             os.environ.get("WANDB_MODE", "online"))
