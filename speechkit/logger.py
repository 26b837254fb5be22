"""Experiment tracking (conf/logger), through accelerate's trackers so every process logs correctly: Weights &
Biases, TensorBoard or MLflow, beside the console, train.log and metrics.jsonl that every run has."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Optional

from accelerate import Accelerator

from speechkit.config import ConfigError, LoggerBackend, LoggerConfig

log = logging.getLogger(__name__)

# backend -> (the module it needs, the extra that installs it)
NEEDS = {LoggerBackend.wandb: ("wandb", "wandb"), LoggerBackend.tensorboard: ("tensorboard", "tensorboard"),
         LoggerBackend.mlflow: ("mlflow", "mlflow")}


def tracker_name(cfg: LoggerConfig) -> Optional[str]:
    """What to pass as Accelerator(log_with=...); refused, naming the extra, when its package is missing."""
    if cfg.backend == LoggerBackend.none:
        return None
    module, extra = NEEDS[cfg.backend]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={cfg.backend.value} needs the {module} package: "
                          f"pip install 'speechkit[{extra}]'") from None
    return cfg.backend.value


def tracker_dir(cfg: LoggerConfig, run_dir: str) -> Optional[str]:
    """Where a tracker that writes event files (TensorBoard) writes them: <run dir>/tensorboard/<run name>/."""
    return os.path.join(run_dir, "tensorboard") if cfg.backend == LoggerBackend.tensorboard else None


def flatten(config: dict, prefix: str = "") -> dict:
    """{"trainer": {"learning_rate": 1e-4}} -> {"trainer.learning_rate": 1e-4}: TensorBoard's hparams and MLflow's
    params take flat values only (lists become their text)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def start(cfg: LoggerConfig, accelerator: Accelerator, public_config: dict, run_dir: str) -> None:
    """Open the run; `public_config` is the resolved config with secrets already redacted."""
    if cfg.backend == LoggerBackend.none:
        return
    name = cfg.name or os.path.basename(os.path.normpath(run_dir))
    if cfg.backend == LoggerBackend.wandb:
        accelerator.init_trackers(cfg.project, config=public_config, init_kwargs={
            "wandb": {"entity": cfg.entity, "name": name, "tags": list(cfg.tags), "dir": run_dir}})
        where = f"mode {os.environ.get('WANDB_MODE', 'online')}"
    elif cfg.backend == LoggerBackend.tensorboard:
        # event files under <run dir>/tensorboard/<run name>/: `tensorboard --logdir <run dir>/tensorboard`
        accelerator.project_configuration.logging_dir = tracker_dir(cfg, run_dir)  # the run dir all processes agreed on
        accelerator.init_trackers(name, config=flatten(public_config))
        where = os.path.join(run_dir, "tensorboard", name)
    else:
        import mlflow

        # MLflow's own local store (a SQLite file; its file store is retired), in the run dir
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            "sqlite:///" + os.path.abspath(os.path.join(run_dir, "mlflow.db"))
        if accelerator.is_main_process:
            mlflow.set_tracking_uri(uri)
        accelerator.init_trackers(cfg.project, config=flatten(public_config), init_kwargs={
            "mlflow": {"run_name": name, "tags": {t: "" for t in cfg.tags} or None}})
        where = uri
    log.info("Logging to %s: project %s, run %s (%s)", cfg.backend.value, cfg.project, name, where)
