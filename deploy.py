"""Deploy a trained model to a SageMaker endpoint: `python deploy.py model_dir=<run>/model sagemaker.role=... sagemaker.bucket=...`."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="deploy")
def main(cfg: DictConfig) -> str:
    return run_or_exit("speechkit.commands.deploy", cfg)


if __name__ == "__main__":
    main()
