"""`python serve.py model_dir=<run>/model`: the deployed handler (code/inference.py) over HTTP on this machine, as
SageMaker's container serves it (GET /ping, POST /invocations); the server is speechkit/inference/server.py, run by
uvicorn.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from speechkit.config import ServeConfig, check_required
from speechkit.inference.server import create_app, settings_env
from speechkit.validation import saved_model_dir


def run(raw_cfg: DictConfig) -> None:
    import uvicorn

    check_required(raw_cfg)
    cfg: ServeConfig = OmegaConf.to_object(raw_cfg)
    model_dir = saved_model_dir(cfg.model_dir)
    os.environ.update(settings_env(cfg.inference))
    if cfg.device:
        os.environ["SPEECHKIT_DEVICE"] = cfg.device
    app = create_app(model_dir)
    print(f"Serving {model_dir} on http://{cfg.host}:{cfg.port} (GET /ping, POST /invocations)\n"
          f"  curl -s -X POST -H 'Content-Type: audio/wav' --data-binary @clip.wav "
          f"http://{cfg.host}:{cfg.port}/invocations", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
