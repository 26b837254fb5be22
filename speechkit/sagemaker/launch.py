"""`python train.py ... hw=sagemaker`: submit the run as a SageMaker training job (SageMaker Python SDK 3).

What travels: the project's source (speechkit/, conf/, train.py) with a requirements.txt of speechkit's own pins
as the job's code; a local data set (audiofolder, a local Hub-format folder, or the synthesized demo corpus) as
the `dataset` input channel; the user's Hydra overrides, as typed, as one hyperparameter (`overrides`, a JSON
list). In the container, entry.py composes the same config with `hw` swapped for `sagemaker.container_hw`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from speechkit.config import (ConfigError, Distribution, SageMakerConfig, Source, TrainConfig, check_required,
                              redact_override)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # the checkout holding speechkit/ and conf/
ENTRY_SCRIPT = "speechkit/sagemaker/entry.py"  # relative to the shipped code
CHANNEL = "dataset"  # the input channel holding a local data set: SM_CHANNEL_DATASET in the container

# CloudWatch metrics, parsed from the trainer's own log lines (speechkit/training/trainer.py):
#   train step=20/400 epoch=0.25 loss=3.1234 lr=2.000e-04 grad_norm=1.234 audio_s_per_s=81.25 padding=0.021 ...
#   eval step=20 epoch=0.25 eval_loss=1.2345 eval_wer=0.5123 eval_cer=0.2000 (80 utterances)
#   eval step=20 epoch=0.25 eval_loss=0.4321 eval_accuracy=0.9500 eval_macro_f1=0.9400 (240 clips)
_NUM = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
TRAINING_METRICS = [
    ("train_loss", rf"train step=\d+/\d+ epoch=\S+ loss={_NUM}"),
    ("learning_rate", rf"train step=\d+/\d+ .*\blr={_NUM}"),
    ("epoch", rf"train step=\d+/\d+ epoch={_NUM}"),
    ("train_audio_s_per_s", rf"train step=\d+/\d+ .*\baudio_s_per_s={_NUM}"),  # throughput: audio s per s
    ("eval_loss", rf"eval step=\d+ epoch=\S+ eval_loss={_NUM}"),
]


def metric_definitions(cfg: DictConfig) -> List[Tuple[str, str]]:
    """The definitions for this run's task: the training figures, eval_loss and the task's scores (its `scores`)."""
    from speechkit.tasks import task_class

    task = OmegaConf.select(cfg, "task")
    scores = task_class(task.name).scores(task)
    sets = list(OmegaConf.select(cfg, "eval_sets", default=None) or {})  # each logged as "eval[<name>] step=..."
    return TRAINING_METRICS + [(s.key, rf"eval step=\d+ .*\b{s.key}={_NUM}") for s in scores] + [
        (f"eval_{name}_{s.key.removeprefix('eval_')}", rf"eval\[{re.escape(name)}\] step=\d+ .*\b{s.key}={_NUM}")
        for name in sets for s in scores]


def task_overrides() -> List[str]:
    """The overrides typed on the command line (Hydra's own `hydra.*` ones are not among them)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError("hw=sagemaker: run it as `python train.py ... hw=sagemaker` (the job carries the "
                          "command line's overrides)")
    return list(HydraConfig.get().overrides.task)


def require(sm: SageMakerConfig, *names: str) -> None:
    for name in names:
        if getattr(sm, name) in (None, ""):
            raise ConfigError(f"sagemaker.{name} is not set: hw=sagemaker needs it (e.g. `sagemaker.{name}=...`; "
                              "see SageMakerConfig in speechkit/config.py and docs/sagemaker.md)")


def boto_session(sm: SageMakerConfig):
    import boto3

    session = boto3.Session(region_name=sm.region) if sm.region else boto3.Session()
    if not session.region_name:
        raise ConfigError("sagemaker.region is not set and no default AWS region is configured: pass `sagemaker.region=us-east-1` "
                          "(or set AWS_DEFAULT_REGION)")
    if session.get_credentials() is None:
        raise ConfigError("no AWS credentials found: run `aws configure` / `aws sso login`, or set "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    return session


def sagemaker_session(sm: SageMakerConfig):
    """A SageMaker session on sagemaker.region with sagemaker.bucket as its bucket (nothing is looked up through STS)."""
    os.environ.setdefault("SAGEMAKER_TELEMETRY_OPT_OUT", "true")
    from sagemaker.core.helper.session_helper import Session

    require(sm, "role", "bucket")
    return Session(boto_session=boto_session(sm), default_bucket=sm.bucket,
                   default_bucket_prefix=sm.prefix or None)


def huggingface_image(scope: str, region: str, instance_type: str, transformers_version: str, pytorch_version: str,
                      py_version: str, explicit: Optional[str], key: str) -> str:
    """A Hugging Face PyTorch image (scope "training" or "inference") for the versions in config, or the explicit
    URI; `key` is the config block named in the error (sagemaker / endpoint)."""
    if explicit:
        return explicit
    from sagemaker.core import image_uris

    try:
        return image_uris.retrieve("huggingface", region=region, version=transformers_version,
                                   base_framework_version=f"pytorch{pytorch_version}", py_version=py_version,
                                   instance_type=instance_type, image_scope=scope)
    except ValueError as err:
        raise ConfigError(f"{key}.transformers_version={transformers_version} / {key}.pytorch_version="
                          f"{pytorch_version} / {key}.py_version={py_version}: no Hugging Face {scope} image "
                          f"({err}); pick versions the SDK lists or give {key}.image_uri") from None


def training_image(sm: SageMakerConfig, region: str) -> str:
    return huggingface_image("training", region, sm.instance_type, sm.transformers_version, sm.pytorch_version,
                             sm.py_version, sm.image_uri, "sagemaker")


def gpus_per_instance(sm: SageMakerConfig, region: str) -> int:
    if sm.gpus_per_instance is not None:
        return sm.gpus_per_instance
    from sagemaker.core import instance_types_gpu_info

    info = instance_types_gpu_info.retrieve(region).get(sm.instance_type)
    return int(info["Count"]) if info else 0


def use_torchrun(sm: SageMakerConfig, region: str) -> bool:
    if sm.distribution == Distribution.torchrun:
        return True
    if sm.distribution == Distribution.none:
        if sm.instance_count > 1:
            raise ConfigError("sagemaker.distribution=none with sagemaker.instance_count > 1: the other instances "
                              "would idle; use sagemaker.distribution=torchrun (or auto)")
        return False
    return sm.instance_count * gpus_per_instance(sm, region) > 1


def requirements(extras: Sequence[str] = ()) -> List[str]:
    """speechkit's own pinned dependencies (pyproject.toml), and those of the named extras, installed into the
    training container."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def job_extras(cfg: TrainConfig) -> List[str]:
    """The extras a training config's task needs beyond the core (its `extras`: the n-gram LM for
    task.decoder.type=kenlm, pyannote for diarization)."""
    from speechkit.tasks import task_class

    return task_class(cfg.task.name).extras(cfg.task)


def stage_code(into: str, extras: Sequence[str] = ()) -> str:
    """The job's code: speechkit/, conf/, train.py, pyproject.toml and requirements.txt."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(REPO / "speechkit", os.path.join(into, "speechkit"), ignore=ignore)
    shutil.copytree(REPO / "conf", os.path.join(into, "conf"), ignore=ignore)
    for name in ("train.py", "pyproject.toml"):
        shutil.copy2(REPO / name, into)
    with open(os.path.join(into, "requirements.txt"), "w") as f:
        f.write("# speechkit's pinned dependencies (pyproject.toml), installed by the SageMaker training driver\n")
        f.write("\n".join(requirements(extras)) + "\n")
    return into


def local_dataset(cfg: TrainConfig) -> Optional[Tuple[str, str]]:
    """(local folder to upload, sub-folder it goes to inside the channel), or None when the container reads the
    data itself (a Hub repo id)."""
    ds = cfg.dataset
    if ds.source == Source.demo:  # synthesized here (espeak-ng); the container finds it in its cache layout
        from speechkit.data.demo_corpus import ensure_corpus

        corpus = ensure_corpus(ds)
        return corpus, os.path.basename(corpus)
    path = os.path.expanduser(ds.path) if ds.path else None
    if ds.source == Source.audiofolder:
        if not path or not os.path.isdir(path):
            raise ConfigError(f"dataset.path: {ds.path} is not a local directory (hw=sagemaker uploads it to "
                              f"s3://{cfg.sagemaker.bucket}/... as the '{CHANNEL}' channel)")
        return path, ""
    if path and os.path.isdir(path):  # a Hub-format data set on disk
        return path, ""
    return None


def container_data_overrides(source: Source, channel_dir: str) -> List[str]:
    """Where the container finds the uploaded data set: the overrides entry.py adds for SM_CHANNEL_DATASET."""
    if source == Source.demo:
        return [f"dataset.demo.cache_dir={channel_dir}"]
    return [f"dataset.path={channel_dir}"]


def launch(raw_cfg: DictConfig, overrides: Optional[List[str]] = None) -> str:
    """Submit the job; returns its name (after it ends when sagemaker.wait)."""
    check_required(raw_cfg)
    cfg: TrainConfig = OmegaConf.to_object(raw_cfg)
    sm = cfg.sagemaker
    require(sm, "role", "bucket", "instance_type", "instance_count", "max_run_s")
    overrides = task_overrides() if overrides is None else list(overrides)
    for override in overrides:  # hyperparameters are shown to anyone who may describe the job, and kept in its record
        if redact_override(override) != override:
            raise ConfigError(f"{override.partition('=')[0]}: its value holds a secret (by its key's name or its "
                              "shape: URL credentials, a Hub or AWS token), and a SageMaker job's hyperparameters "
                              "are readable by anyone who may describe the job: give the job its credentials through "
                              "its IAM role (e.g. from AWS Secrets Manager), not on the command line")

    from sagemaker.core.training.configs import (CheckpointConfig, Compute, InputData, MetricDefinition,
                                                 SourceCode, StoppingCondition)
    from sagemaker.train.distributed import Torchrun
    from sagemaker.train.model_trainer import ModelTrainer

    session = sagemaker_session(sm)
    region = session.boto_region_name
    image = training_image(sm, region)
    distributed = Torchrun() if use_torchrun(sm, region) else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = local_dataset(cfg)
    prefix = "/".join(p for p in (sm.prefix, sm.base_job_name) if p)

    inputs = []
    if data is not None:
        folder, sub = data
        channel_key = f"{prefix}/datasets/{cfg.dataset.name}-{stamp}"
        log.info("Uploading the data set %s to s3://%s/%s", folder, sm.bucket, channel_key)
        session.upload_data(path=folder, bucket=sm.bucket, key_prefix="/".join(p for p in (channel_key, sub) if p))
        inputs.append(InputData(channel_name=CHANNEL, data_source=f"s3://{sm.bucket}/{channel_key}"))

    stopping = StoppingCondition(max_runtime_in_seconds=sm.max_run_s)
    checkpoint = None
    if sm.spot:
        max_wait = sm.max_wait_s or 2 * sm.max_run_s
        if max_wait < sm.max_run_s:
            raise ConfigError(f"sagemaker.max_wait_s={max_wait} must be at least sagemaker.max_run_s={sm.max_run_s}")
        stopping = StoppingCondition(max_runtime_in_seconds=sm.max_run_s, max_wait_time_in_seconds=max_wait)
        checkpoint = CheckpointConfig(s3_uri=f"s3://{sm.bucket}/{prefix}/checkpoints/{stamp}",
                                      local_path="/opt/ml/checkpoints")

    with tempfile.TemporaryDirectory(prefix="speechkit-code-") as code:
        trainer = ModelTrainer(
            sagemaker_session=session,
            role=sm.role,
            base_job_name=sm.base_job_name,
            training_image=image,
            source_code=SourceCode(source_dir=stage_code(code, job_extras(cfg)), requirements="requirements.txt",
                                   entry_script=ENTRY_SCRIPT),
            distributed=distributed,
            compute=Compute(instance_type=sm.instance_type, instance_count=sm.instance_count,
                            volume_size_in_gb=sm.volume_size_gb or 30, enable_managed_spot_training=bool(sm.spot)),
            stopping_condition=stopping,
            checkpoint_config=checkpoint,
            hyperparameters={"overrides": json.dumps(overrides)},
            environment={"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
        ).with_metric_definitions([MetricDefinition(name=n, regex=r) for n, r in metric_definitions(raw_cfg)])
        trainer.train(input_data_config=inputs or None, wait=bool(sm.wait), logs=bool(sm.wait))
    job = trainer._latest_training_job.training_job_name
    record = {"job_name": job, "region": region, "image": image, "instance_type": sm.instance_type,
              "instance_count": sm.instance_count, "distribution": "torchrun" if distributed else "none",
              "overrides": overrides, "dataset_channel": inputs[0].data_source if inputs else None,
              "output_path": f"{trainer.output_data_config.s3_output_path.rstrip('/')}/{job}/output/model.tar.gz"}
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "sagemaker_job.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"SageMaker training job: {job}\n"
          f"  image {image}\n  {sm.instance_count} x {sm.instance_type}, "
          f"distribution {record['distribution']}, spot {bool(sm.spot)}\n"
          f"  model (when done): {record['output_path']}\n"
          f"  follow it: aws sagemaker describe-training-job --region {region} --training-job-name {job}\n"
          f"  logs: CloudWatch group /aws/sagemaker/TrainingJobs, stream {job}/algo-1-...", flush=True)
    return job

