"""Look at a data set before training: `python inspect_data.py dataset=<name> [dataset.path=...]` (see README.md)."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="inspect")
def main(cfg: DictConfig) -> None:
    run_or_exit("speechkit.commands.inspect_data", cfg)


if __name__ == "__main__":
    main()
