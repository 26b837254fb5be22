"""Score a trained model: `python evaluate.py model_dir=<run>/model dataset=<name> split=<name>`."""

import sys

import hydra
from omegaconf import DictConfig

from speechkit.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from speechkit import evaluation

    try:
        return evaluation.run(cfg).wer  # what a sweep's summary shows (evaluate.py -m split=test,validation)
    except ConfigError as err:  # a config that cannot work: say what to change, no stack trace
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
