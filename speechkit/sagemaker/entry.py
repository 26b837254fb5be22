"""The training job's entry point inside the SageMaker container (`SourceCode.entry_script`).

Run by SageMaker's driver as `python speechkit/sagemaker/entry.py --overrides '<JSON list>'` from the shipped code
(under torchrun when the job has several GPUs). It composes the very config `python train.py <overrides>` composed
on the user's machine, with three changes: `hw` is swapped for `sagemaker.container_hw` (the container's GPU), the data set
is read from the `dataset` channel (SM_CHANNEL_DATASET) when one was uploaded, and the run dir is the job's
checkpoint dir (restored from S3 after a spot interruption, then resumed with trainer.resume=auto). The shipped
model goes to SM_MODEL_DIR (-> model.tar.gz); the run's small records (config, metrics, drop report, log) go to
SM_OUTPUT_DATA_DIR (-> output.tar.gz).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import List

CODE_ROOT = Path(__file__).resolve().parents[2]
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as train.py's (Hydra's default)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def container_overrides(overrides: List[str], container_hw: str, container_precision: str, source: str,
                        channel_dir: str | None, run_dir: str) -> List[str]:
    """The user's overrides with the remote hardware replaced by the container's, plus the data channel."""
    from speechkit.sagemaker.launch import container_data_overrides

    data_keys = {"dataset.path", "dataset.demo.cache_dir"} if channel_dir else set()
    kept = [o for o in overrides
            if _key(o) != "hw" and not _key(o).startswith("sagemaker.")  # the job's own settings
            and _key(o) not in data_keys and _key(o) != "run_dir"]
    out = [f"hw={container_hw}", *kept]
    if container_precision != "auto":
        out.append(f"hw.mixed_precision={container_precision}")
    if channel_dir:
        out += container_data_overrides(source, channel_dir)
    if not any(_key(o) == "trainer.resume" for o in kept):
        out.append("trainer.resume=auto")  # a spot job restarted after an interruption goes on where it was
    return out + [f"run_dir={run_dir}"]


def compose(overrides: List[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from speechkit.cli import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CODE_ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", default=None, help="JSON list of Hydra overrides (the job's hyperparameter)")
    args, _ = parser.parse_known_args(argv)
    raw = args.overrides if args.overrides is not None else json.loads(os.environ.get("SM_HPS", "{}")).get("overrides")
    overrides = json.loads(raw) if isinstance(raw, str) else list(raw or [])

    from speechkit.commands import train
    from speechkit.config import ConfigError
    from speechkit.rundir import RunDir

    run_dir = os.environ.get("SPEECHKIT_RUN_DIR", "/opt/ml/checkpoints/speechkit")
    run = RunDir(run_dir)
    model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
    output_dir = os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    channel_dir = os.environ.get("SM_CHANNEL_DATASET")
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        from omegaconf import OmegaConf

        remote = OmegaConf.to_container(compose(overrides), enum_to_str=True)  # as submitted: which hw to use here
        final = container_overrides(overrides, remote["sagemaker"]["container_hw"] or "cuda",
                                    remote["sagemaker"]["container_mixed_precision"] or "auto", remote["dataset"]["source"],
                                    channel_dir, run_dir)
        os.makedirs(run_dir, exist_ok=True)
        handlers = [logging.StreamHandler(sys.stdout)]
        if main_process:
            handlers.append(logging.FileHandler(run.log))
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
        import speechkit

        logging.getLogger(__name__).info("speechkit from %s; overrides in the container: %s",
                                         Path(speechkit.__file__).resolve().parent.parent, " ".join(final))
        cfg = compose(final)
        train.run(cfg)
    except ConfigError as err:  # a config that cannot work: say what to change, no stack trace
        print(f"speechkit: config error: {err}", file=sys.stderr)
        return 2

    if main_process:
        shutil.copytree(run.model, model_dir, dirs_exist_ok=True)
        os.makedirs(output_dir, exist_ok=True)
        for path in run.records():
            if os.path.isfile(path):
                shutil.copy2(path, output_dir)
        print(f"speechkit: model written to {model_dir}", flush=True)
    return 0


if __name__ == "__main__":
    # Run as a script from the shipped code: import speechkit from there, not from this folder.
    sys.path[0] = str(CODE_ROOT)
    sys.exit(main())
