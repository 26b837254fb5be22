"""Fine-tune a speech model (speech recognition, audio classification, diarization): `python train.py [group=option ...] [key=value ...]` (see README.md)."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_or_exit("speechkit.commands.train", cfg)


if __name__ == "__main__":
    main()
