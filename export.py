"""Export a trained model to ONNX, checked against the PyTorch one: `python export.py model_dir=<run>/model`."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_or_exit("speechkit.commands.export", cfg)


if __name__ == "__main__":
    main()
