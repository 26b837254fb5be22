"""`python train.py`: config -> data -> targets (the task's: a vocab, a label set, checked references) -> model (the
task's head on its model family) -> trainer -> artifacts, in that order."""

from __future__ import annotations

import logging
import os
import shutil

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf

from speechkit import data, hub
from speechkit.config import Backend, TrainConfig, check_required, public_config
from speechkit.data import streaming
from speechkit.data.augment import Augmenter
from speechkit.hardware import make_accelerator
from speechkit.logger import start as start_tracking, tracker_dir, tracker_name
from speechkit.models import adapters
from speechkit.rundir import RunDir
from speechkit.tasks import make_task
from speechkit.tasks.scoring import write_results
from speechkit.training import trainer

log = logging.getLogger(__name__)


def run(raw_cfg: DictConfig) -> float | str:
    """Train as configured; returns what sweeps minimise (the shipped model's eval WER, or 1 - accuracy for a
    classifier), or with hw=sagemaker the name of the SageMaker training job that trains it remotely."""
    check_required(raw_cfg)
    if raw_cfg.hw.backend == Backend.sagemaker:
        from speechkit.sagemaker.launch import launch

        return launch(raw_cfg)
    cfg: TrainConfig = OmegaConf.to_object(raw_cfg)
    accelerator = make_accelerator(cfg.hw, cfg.trainer.gradient_accumulation_steps, tracker_name(cfg.logger),
                                   find_unused_parameters=cfg.model.layerdrop != 0,  # null: the checkpoint's, maybe > 0
                                   logging_dir=tracker_dir(cfg.logger, cfg.run_dir))
    run_dir = _agree_on_run_dir(cfg.run_dir, accelerator)
    os.makedirs(run_dir, exist_ok=True)
    public = public_config(raw_cfg)
    if accelerator.is_main_process:
        OmegaConf.save(OmegaConf.create(public), RunDir(run_dir).config)
    start_tracking(cfg.logger, accelerator, public, run_dir)
    task = make_task(cfg)
    # the checkpoint's config only, and the model's family bound for the run: a model unfit for the task stops here
    config, head = task.model_config(cfg.model)
    augment = Augmenter(cfg.augment, cfg.model.sampling_rate)  # its folders checked before any data is read
    adapter = adapters.make(cfg.adapter, cfg.dataset.spoken_language(), cfg.model.name_or_path)
    family = task.family
    adapter.check(config, head, family)  # an adapter the model cannot have: refused before any data is read

    # 1. Data: the two splits, checked once; what is dropped, and why, goes to drop_report.jsonl. With
    # dataset.streaming the training split is checked as it streams (speechkit/data/streaming.py): only its targets are
    # read here.
    ds = cfg.dataset
    report = data.DropReport()
    # the shortest clip the model takes (its receptive field), and the longest it takes whole (a fixed input window)
    clip_samples = (family.receptive_field(config, cfg.model.sampling_rate),
                    family.longest_clip(config, cfg.model.sampling_rate))
    with accelerator.main_process_first():  # the first process fills the datasets cache for the others
        wanted = {ds.eval_split: False} if ds.streaming else {ds.train_split: True, ds.eval_split: False}
        splits = data.load_splits(ds, wanted, cfg.model.sampling_rate, report, task.target, *clip_samples)
        train_rows = streaming.target_rows(ds, task.target, ds.train_split) if ds.streaming else \
            splits[ds.train_split]
        more_rows = {name: data.load_splits(other, {other.eval_split: False}, cfg.model.sampling_rate, report,
                                            task.target, *clip_samples)[other.eval_split]
                     for name, other in cfg.eval_sets.items()}  # eval_sets: scored beside the eval split
    eval_rows = splits[ds.eval_split]

    # 2. Targets, the task's: the vocab (speech recognition), the label set (classification) or the checked
    # references (diarization), from the training split.
    train_rows, eval_rows = task.fit_targets(train_rows, eval_rows, (ds.train_split, ds.eval_split), report,
                                             run_dir, accelerator.is_main_process)
    if ds.streaming:  # the training split's drops are the stream's to report, as it reads the rows
        report.rows = [r for r in report.rows if r["split"] != ds.train_split]

    # 3. Model with the task's head, and the processor that ships with it; an adapter (conf/adapter) trains in its
    # place, the model frozen.
    set_seed(cfg.trainer.seed)  # the same seed gives the same randomly initialised weights
    model = task.build_model(cfg.model, run_dir, cfg.augment.specaugment, adapter)
    eval_set = task.dataset(eval_rows, training=False)
    more_sets = {name: task.dataset(task.check_eval_rows(rows, f"{name}/{cfg.eval_sets[name].eval_split}", report),
                                    training=False) for name, rows in more_rows.items()}  # checked as the model sees
    if accelerator.is_main_process:
        report.write(RunDir(run_dir).drop_report)
    accelerator.wait_for_everyone()
    log.info("Data '%s': %s train / %d eval %s%s, %s; dropped: %s", ds.name,
             "streamed" if ds.streaming else len(train_rows), len(eval_rows), task.unit,
             "".join(f", {len(s)} in eval set {name}" for name, s in more_sets.items()), task.describe_targets(),
             report.summary())
    train_set = streaming.training_batches(ds, cfg.trainer, task, clip_samples, accelerator, report,
                                           RunDir(run_dir).drop_report, augment) if ds.streaming else \
        task.dataset(train_rows, training=True, augment=augment)
    log.info("Augmentation (conf/augment): %s%s", augment.describe(),
             "; SpecAugment in the model" if cfg.augment.specaugment.enabled else "")

    # 4. Train; model/ is written by the trainer and scored once more as shipped.
    shipped = trainer.train(cfg.trainer, accelerator, task, model, train_set, eval_set, run_dir, adapter, more_sets)
    result = task.after_training(model, eval_set, accelerator, run_dir, shipped,  # e.g. the n-gram LM decoder
                                 cfg.trainer.eval_batch_size)
    result.eval_sets = shipped.eval_sets
    if accelerator.is_main_process:
        write_results(task, result, eval_rows, run_dir, f"{ds.name}/{ds.eval_split}: {RunDir(run_dir).model}")
        hub.write_card(cfg, result, hub.typed_overrides(), accelerator.mixed_precision, task)
        if cfg.hub.push:
            hub.push(RunDir(run_dir).model, cfg.hub)
        print(f"\nFinal eval on '{ds.eval_split}' ({len(result.rows)} {task.unit}): {result.summary}\n"
              f"Model: {RunDir(run_dir).model}", flush=True)
    accelerator.end_training()
    return result.objective


def _agree_on_run_dir(own: str, accelerator: Accelerator) -> str:
    """Under `accelerate launch` every process composes its own config, and the default run dir is a timestamp:
    two processes that start either side of a second boundary would write to two run dirs (and a resume would miss
    half the random states). All use the main process's; a stray dir Hydra made for another process, holding only
    its own .hydra/ and train.log, is removed."""
    if accelerator.num_processes == 1:
        return own
    chosen = [own]
    broadcast_object_list(chosen, from_process=0)
    main = chosen[0]
    if os.path.abspath(own) != os.path.abspath(main) and os.path.isdir(own) \
            and set(os.listdir(own)) <= {".hydra", os.path.basename(RunDir(own).log)}:
        shutil.rmtree(own, ignore_errors=True)
    return main
