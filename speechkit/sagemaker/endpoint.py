"""A SageMaker real-time endpoint for a saved model (deploy.py): model.tar.gz packed as SageMaker's Hugging
Face/PyTorch inference containers expect it (the model and processor files at the top, code/inference.py (the
handler, speechkit/inference/ bundled into one file) and code/requirements.txt beside them; with inference.runtime=onnx
or onnx_int8 the checked export and its parity record in onnx/, and onnxruntime in the requirements), uploaded to
s3://<sagemaker.bucket>/<sagemaker.prefix>/models/<name>/, and the model, the endpoint config and the endpoint (all
named <name>) created with the SageMaker Python SDK 3 resources."""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import time
from pathlib import Path
from typing import List, NamedTuple

from speechkit.config import ConfigError, DeployConfig
from speechkit.inference import bundle
from speechkit.inference.onnx import ONNX_FOLDER, PARITY_FILE
from speechkit.inference.server import settings_env
from speechkit.sagemaker import launch

log = logging.getLogger(__name__)

# What the handler imports, pinned as speechkit pins them (pyproject.toml); installed by the inference container.
HANDLER_REQUIREMENTS = ("torch", "torchcodec", "transformers", "numpy")
ONNX_REQUIREMENTS = ("onnxruntime",)  # and, with inference.runtime=onnx or onnx_int8, what runs the export


def handler_requirements(runtime: str = "torch") -> List[str]:
    pins = {re.split(r"[=<>!~ ]", r, maxsplit=1)[0].lower(): r for r in launch.requirements(["onnx"])}
    names = HANDLER_REQUIREMENTS + (ONNX_REQUIREMENTS if runtime != "torch" else ())
    return [pins[name] for name in names if name in pins]


def pack(model_dir: str, tarball: str, runtime: str = "torch") -> str:
    """model.tar.gz: every file of model_dir at the top, code/inference.py, code/requirements.txt; with an ONNX
    runtime, also the export it serves and its parity record (onnx/), checked first as the handler checks them."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    names = {p.name for p in files}
    if "config.json" not in names or not names & {"model.safetensors", "model.safetensors.index.json"}:
        raise ConfigError(f"model_dir: {model_dir} is not a saved model (needs config.json and model.safetensors); "
                          "point it at a run's model/ folder")
    packed = [(path, path.name) for path in files]
    if runtime != "torch":  # refused here, before anything is uploaded, as the endpoint would refuse it at start-up
        from speechkit.onnx_export import served_files

        exports = [Path(f) for f in served_files(model_dir, runtime)]  # a Whisper's three graphs
        parity = exports[-1].with_name(PARITY_FILE)
        packed += [(path, f"{ONNX_FOLDER}/{path.name}") for path in (*exports, parity)]
    requirements = Path(tarball).with_name("requirements.txt")
    requirements.write_text("\n".join(handler_requirements(runtime)) + "\n")
    with tarfile.open(tarball, "w:gz") as tar:
        for path, name in packed:
            tar.add(path, arcname=name)
        # the handler as one file that imports nothing of speechkit (speechkit/inference/bundle.py)
        handler = bundle.bundle().encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size, info.mtime, info.mode = len(handler), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(handler))
        tar.add(requirements, arcname="code/requirements.txt")
    return tarball


def inference_image(cfg: DeployConfig, region: str) -> str:
    ep = cfg.endpoint
    return launch.huggingface_image("inference", region, ep.instance_type, ep.transformers_version, ep.pytorch_version,
                             ep.py_version, ep.image_uri, "endpoint")


class Endpoint(NamedTuple):
    name: str
    region: str
    model_data: str  # the uploaded model.tar.gz
    image: str


def deploy(cfg: DeployConfig, model_dir: str) -> Endpoint:
    """Pack, upload and create the endpoint; what was made."""
    sm = cfg.sagemaker
    session = launch.sagemaker_session(sm)  # names sagemaker.role / .bucket / .region when they are missing
    region = session.boto_region_name
    name = cfg.endpoint.name or f"speechkit-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name):
        raise ConfigError(f"endpoint.name={name}: 1-63 letters, digits and hyphens, starting with a letter or digit")
    image = inference_image(cfg, region)

    os.makedirs(cfg.run_dir, exist_ok=True)
    tarball = pack(model_dir, os.path.join(cfg.run_dir, "model.tar.gz"), cfg.inference.runtime.value)
    key_prefix = "/".join(p for p in (sm.prefix, "models", name) if p)
    model_data = session.upload_data(path=tarball, bucket=sm.bucket, key_prefix=key_prefix)
    log.info("Uploaded %s to %s", tarball, model_data)

    from sagemaker.core.helper.session_helper import container_def, production_variant

    env = {**settings_env(cfg.inference), "SAGEMAKER_PROGRAM": "inference.py", "HF_HUB_OFFLINE": "1"}
    session.create_model(name, role=sm.role, container_defs=container_def(image, model_data, env=env))
    session.create_endpoint_config(name, [production_variant(
        model_name=name, instance_type=cfg.endpoint.instance_type,
        initial_instance_count=cfg.endpoint.instance_count)])
    session.create_endpoint(name, name, wait=cfg.endpoint.wait)
    return Endpoint(name, region, model_data, image)
