"""Fine-tune a wav2vec2 CTC model: `python train.py [group=option ...] [key=value ...]` (see README.md)."""

import sys
import warnings

import hydra
from omegaconf import DictConfig

from speechkit.config import ConfigError, register_configs

register_configs()
# conf/hydra/launcher/submitit_slurm.yaml shadows the submitit plugin's config of that name on purpose, and Hydra
# checks it against the plugin's schema ("automatic schema matching"), with a deprecation notice on every run.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore")


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
