"""`python train.py`: config -> data -> vocab -> model -> trainer -> artifacts, in that order."""

from __future__ import annotations

import logging
import os
import shutil

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf

from speechkit import data, trainer, vocab as vocabulary
from speechkit.config import Backend, TrainConfig, check_required, public_config
from speechkit.hardware import make_accelerator
from speechkit.logger import start as start_tracking, tracker_name
from speechkit.model import build_model, uses_attention_mask
from speechkit.rundir import RunDir

log = logging.getLogger(__name__)


def run(raw_cfg: DictConfig) -> float | str:
    """Train as configured; returns the shipped model's eval WER (what sweeps minimise), or with hw=sagemaker the
    name of the SageMaker training job that trains it remotely."""
    check_required(raw_cfg)
    if raw_cfg.hw.backend == Backend.sagemaker:
        from speechkit.sagemaker.launch import launch

        return launch(raw_cfg)
    cfg: TrainConfig = OmegaConf.to_object(raw_cfg)
    accelerator = make_accelerator(cfg.hw, cfg.trainer.gradient_accumulation_steps, tracker_name(cfg.logger),
                                   find_unused_parameters=cfg.model.layerdrop != 0)  # null: the checkpoint's, maybe > 0
    run_dir = _agree_on_run_dir(cfg.run_dir, accelerator)
    os.makedirs(run_dir, exist_ok=True)
    public = public_config(raw_cfg)
    if accelerator.is_main_process:
        OmegaConf.save(OmegaConf.create(public), RunDir(run_dir).config)
    start_tracking(cfg.logger, accelerator, public, run_dir)

    # 1. Data: the two splits, checked once; what is dropped, and why, goes to drop_report.jsonl.
    ds = cfg.dataset
    report = data.DropReport()
    with accelerator.main_process_first():  # the first process fills the datasets cache for the others
        splits = data.load_splits(ds, {ds.train_split: True, ds.eval_split: False}, cfg.model.sampling_rate, report)
    train_rows, eval_rows = splits[ds.train_split], splits[ds.eval_split]

    # 2. Vocab: built from the training text (or reused), saved beside the run.
    vocab = vocabulary.make_vocab(cfg.vocab, data.texts(train_rows), data.texts(eval_rows))
    train_rows = vocabulary.drop_unspellable(train_rows, vocab, ds.train_split, report)
    vocabulary.warn_unspellable(data.texts(eval_rows), vocab, ds.eval_split, cfg.vocab.unk_token)
    vocab_path = RunDir(run_dir).vocab
    if accelerator.is_main_process:
        vocabulary.write_vocab(vocab, vocab_path)
        report.write(RunDir(run_dir).drop_report)
    accelerator.wait_for_everyone()
    log.info("Data '%s': %d train / %d eval utterances, %d symbols; dropped: %s", ds.name, len(train_rows),
             len(eval_rows), len(vocab), report.summary())

    # 3. Model, and the processor (tokenizer + feature extractor) that ships with it.
    set_seed(cfg.trainer.seed)  # the same seed gives the same randomly initialised weights
    model = build_model(cfg.model, len(vocab), vocab[cfg.vocab.pad_token])
    processor = vocabulary.make_processor(vocab_path, cfg.vocab, cfg.model.sampling_rate, uses_attention_mask(model))
    encode = lambda text: processor.tokenizer(text).input_ids  # noqa: E731
    train_set = data.SpeechDataset(train_rows, cfg.model.sampling_rate, encode)
    eval_set = data.SpeechDataset(eval_rows, cfg.model.sampling_rate, encode)

    # 4. Train; model/ is written by the trainer and scored once more as shipped.
    result = trainer.train(cfg.trainer, accelerator, model, processor, train_set, eval_set, run_dir)
    if accelerator.is_main_process:
        print(f"\nFinal eval on '{ds.eval_split}' ({len(result.rows)} utterances): "
              f"WER {result.wer:.4f}  CER {result.cer:.4f}\nModel: {RunDir(run_dir).model}", flush=True)
    accelerator.end_training()
    return result.wer


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
