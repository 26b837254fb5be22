"""Deploy a trained model to a SageMaker endpoint: `python deploy.py model_dir=<run>/model hw.role=... hw.bucket=...`."""

import sys

import hydra
from omegaconf import DictConfig

from speechkit.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="deploy")
def main(cfg: DictConfig) -> str:
    from speechkit.sagemaker import deploy

    try:
        return deploy.run(cfg)
    except ConfigError as err:  # a config that cannot work: say what to change, no stack trace
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
