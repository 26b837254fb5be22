"""Score a trained model: `python evaluate.py model_dir=<run>/model dataset=<name> split=<name>`."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    # What a sweep's summary shows (evaluate.py -m split=test,validation): the WER, or 1 - accuracy.
    return run_or_exit("speechkit.commands.evaluate", cfg).objective


if __name__ == "__main__":
    main()
