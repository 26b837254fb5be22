"""Fine-tune a wav2vec2 CTC model: `python train.py [group=option ...] [key=value ...]` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from speechkit.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from speechkit import training  # imported here so `--cfg job` and `--help` stay fast

    try:
        return training.run(cfg)
    except ConfigError as err:  # a config that cannot work: say what to change, no stack trace
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
