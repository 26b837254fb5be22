"""Serve a trained model over HTTP as its SageMaker endpoint would: `python serve.py model_dir=<run>/model`."""

import sys

import hydra
from omegaconf import DictConfig

from speechkit.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from speechkit.sagemaker import server

    try:
        server.run(cfg)
    except ConfigError as err:  # a config that cannot work: say what to change, no stack trace
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
