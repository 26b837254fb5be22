"""`python deploy.py model_dir=<run>/model sagemaker.role=... sagemaker.bucket=...`: a SageMaker real-time endpoint
for a model: model.tar.gz packed (the handler bundled into code/inference.py), uploaded, and the endpoint created by
speechkit/sagemaker/endpoint.py; printed: how to call it and how to delete it.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from speechkit.config import Backend, ConfigError, DeployConfig, check_required
from speechkit.sagemaker.endpoint import deploy


def run(raw_cfg: DictConfig) -> str:
    """Deploy; returns the endpoint name."""
    check_required(raw_cfg)
    cfg: DeployConfig = OmegaConf.to_object(raw_cfg)
    if cfg.hw.backend != Backend.sagemaker:
        raise ConfigError(f"hw={cfg.hw.backend.value}: deploy.py deploys to SageMaker; keep hw=sagemaker")
    model_dir = os.path.expanduser(cfg.model_dir)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"model_dir: {model_dir} is not a directory; point it at a run's model/ folder")
    name, region, model_data, image = deploy(cfg, model_dir)
    print(f"SageMaker endpoint: {name}  ({cfg.endpoint.instance_count} x {cfg.endpoint.instance_type}, region "
          f"{region})\n"
          f"  model    {model_data}\n  image    {image}\n"
          f"Call it (audio bytes, or JSON {{\"speech_array\": [...], \"sampling_rate\": 16000}}):\n"
          f"  aws sagemaker-runtime invoke-endpoint --region {region} --endpoint-name {name} "
          f"--content-type audio/wav --body fileb://clip.wav out.json && cat out.json\n"
          f"  python -c \"import boto3; print(boto3.client('sagemaker-runtime', region_name='{region}')"
          f".invoke_endpoint(EndpointName='{name}', ContentType='audio/wav', "
          f"Body=open('clip.wav', 'rb').read())['Body'].read().decode())\"\n"
          f"Delete it (an endpoint is billed while it exists):\n"
          f"  aws sagemaker delete-endpoint --region {region} --endpoint-name {name}\n"
          f"  aws sagemaker delete-endpoint-config --region {region} --endpoint-config-name {name}\n"
          f"  aws sagemaker delete-model --region {region} --model-name {name}", flush=True)
    return name
