"""Who spoke when: `python diarize.py model_dir=<run>/model audio=<file, folder or glob> [asr_model_dir=<ASR model>]`."""

import hydra
from omegaconf import DictConfig

from speechkit.cli import prepare, run_or_exit

prepare()


@hydra.main(version_base="1.3", config_path="conf", config_name="diarize")
def main(cfg: DictConfig) -> None:
    run_or_exit("speechkit.commands.diarize", cfg)


if __name__ == "__main__":
    main()
