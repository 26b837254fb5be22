"""Serve a trained model over HTTP as its SageMaker endpoint would: `python serve.py model_dir=<run>/model`."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    run_or_exit("speechkit.commands.serve", cfg)


if __name__ == "__main__":
    main()
