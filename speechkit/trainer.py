"""The training loop (conf/trainer), on accelerate: one function, read top to bottom."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor, get_linear_schedule_with_warmup

from speechkit import checkpoint
from speechkit.batching import CTCCollator, DurationBatchSampler
from speechkit.config import FinalModel, TrainerConfig
from speechkit.data import SpeechDataset
from speechkit.model import uses_attention_mask
from speechkit.scoring import EvalResult, run_eval

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """What a checkpoint needs beyond accelerate's own state to continue exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches, so resume can skip exactly these
    best_wer: Optional[float] = None
    best_cer: Optional[float] = None
    best_step: Optional[int] = None
    skipped_nonfinite: int = 0
    total_steps: int = 0


class MetricsFile:
    """metrics.jsonl: one JSON object per logged train window or evaluation (main process only); the same
    values go to the accelerate trackers (logger=wandb) when there are any."""

    def __init__(self, path: str, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator

    def write(self, kind: str, step: int, values: dict) -> None:
        if self.accelerator.trackers:  # accelerate.log is a no-op off the main process
            self.accelerator.log({k if k.startswith(kind) or k == "epoch" else f"{kind}_{k}": v
                                  for k, v in values.items()}, step=step)
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")


def train(cfg: TrainerConfig, accelerator: Accelerator, model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor,
          train_set: SpeechDataset, eval_set: SpeechDataset, run_dir: str) -> EvalResult:
    """Fine-tune `model`, write checkpoints/, best/ and model/ under `run_dir`; returns the shipped model's eval."""
    set_seed(cfg.seed)
    collator = CTCCollator(processor.feature_extractor, uses_attention_mask(model))
    train_sampler = DurationBatchSampler(train_set.lengths, cfg.batch_size, seed=cfg.seed,
                                         group_by_length=cfg.group_by_length)
    eval_sampler = DurationBatchSampler(eval_set.lengths, cfg.eval_batch_size, shuffle=False)
    # Loaders draw worker seeds from their own generators, not the global one, so starting an iterator (as a
    # resumed run does mid-epoch) leaves the dropout/masking random stream exactly as an uninterrupted run has it.
    train_loader = torch.utils.data.DataLoader(train_set, batch_sampler=train_sampler, collate_fn=collator,
                                               num_workers=cfg.num_workers,
                                               generator=torch.Generator().manual_seed(cfg.seed))
    eval_loader = torch.utils.data.DataLoader(eval_set, batch_sampler=eval_sampler, collate_fn=collator,
                                              num_workers=cfg.num_workers,
                                              generator=torch.Generator().manual_seed(cfg.seed))

    no_decay = ("bias", "layer_norm.weight", "layernorm.weight")
    params = [p for p in model.named_parameters() if p[1].requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
         {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or math.ceil(cfg.num_epochs * steps_per_epoch)
    # Stepped by hand once per optimizer step (not prepared: accelerate would step it once per process).
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)

    ckpt_root = os.path.join(run_dir, "checkpoints")
    state = TrainerState(total_steps=total_steps)
    resume_from = checkpoint.resolve_resume(cfg.resume, ckpt_root)
    if resume_from:
        accelerator.load_state(resume_from)
        state = TrainerState(**checkpoint.load_state(resume_from))
        if state.total_steps != total_steps:
            raise ValueError(f"trainer.resume: {resume_from} was made for {state.total_steps} steps, this run "
                             f"has {total_steps}; keep trainer.num_epochs/max_steps/batch_size as they were")
        log.info("Resumed from %s at step %d (epoch %d, batch %d)", resume_from, state.global_step, state.epoch,
                 state.batches_done_in_epoch)
    elif cfg.resume == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", ckpt_root)

    metrics = MetricsFile(os.path.join(run_dir, "metrics.jsonl"), accelerator)
    texts = eval_set.texts
    log.info("Training %d steps: %d examples, %d per device x %d process(es) x %d accumulation, %d steps/epoch",
             total_steps, len(train_set), cfg.batch_size, accelerator.num_processes,
             cfg.gradient_accumulation_steps, steps_per_epoch)

    def evaluate_and_track(epoch_float: float) -> None:
        result = run_eval(model, eval_loader, collator, processor.tokenizer, texts, accelerator)
        values = {"epoch": round(epoch_float, 4), **result.metrics}
        log.info("eval step=%d epoch=%.2f eval_loss=%.4f eval_wer=%.4f eval_cer=%.4f (%d utterances)",
                 state.global_step, epoch_float, result.loss, result.wer, result.cer, len(result.rows))
        metrics.write("eval", state.global_step, values)
        # Lowest WER wins; CER breaks ties (early on, every evaluation has WER 1.0). Gathered values: the same in
        # every process, so all of them take this branch together.
        if state.best_wer is None or (result.wer, result.cer) < (state.best_wer, state.best_cer):
            state.best_wer, state.best_cer, state.best_step = result.wer, result.cer, state.global_step
            weights = accelerator.get_state_dict(model)  # in every process: gathers FSDP/ZeRO-3 shards
            if accelerator.is_main_process:
                checkpoint.replace_dir(lambda path: accelerator.unwrap_model(model).save_pretrained(
                    path, state_dict=weights), os.path.join(ckpt_root, "best"))
            accelerator.wait_for_everyone()

    model.train()
    progress = tqdm(total=total_steps, initial=state.global_step, desc="Training", dynamic_ncols=True,
                    disable=not (cfg.progress_bar and accelerator.is_main_process))
    window_loss, window_batches, skip_this_step = 0.0, 0, False
    with logging_redirect_tqdm():
        while state.global_step < total_steps:
            # Both: accelerate's loader re-sets its sampler's epoch from its own counter when iterated.
            train_loader.set_epoch(state.epoch)
            train_sampler.set_epoch(state.epoch)
            batches = train_loader
            if state.batches_done_in_epoch:
                batches = accelerator.skip_first_batches(train_loader, state.batches_done_in_epoch)
            for batch in batches:
                state.batches_done_in_epoch += 1
                if batch is None:
                    continue
                with accelerator.accumulate(model):
                    loss = model(**collator.model_inputs(batch)).loss
                    if _finite_everywhere(loss, accelerator):
                        accelerator.backward(loss)
                        window_loss += loss.detach().float().item()
                        window_batches += 1
                    else:
                        skip_this_step = True  # keep going; the optimizer step below is skipped
                    if accelerator.sync_gradients:
                        grad_norm = None
                        if skip_this_step:
                            state.skipped_nonfinite += 1
                            log.warning("non-finite loss at step %d: step skipped (%d so far)",
                                        state.global_step + 1, state.skipped_nonfinite)
                        else:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.global_step += 1
                skip_this_step = False
                progress.update(1)
                epoch_float = state.epoch + state.batches_done_in_epoch / len(train_loader)

                if state.global_step % cfg.logging_steps == 0 or state.global_step == total_steps:
                    window_mean = window_loss / max(window_batches, 1)
                    if accelerator.num_processes > 1:  # every process's batches, not only the main one's
                        window_mean = accelerator.reduce(torch.tensor(window_mean, device=accelerator.device),
                                                         "mean").item()
                    values = {"epoch": round(epoch_float, 4), "loss": window_mean,
                              "learning_rate": scheduler.get_last_lr()[0],
                              "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                              "skipped_nonfinite": state.skipped_nonfinite}
                    log.info("train step=%d/%d epoch=%.2f loss=%.4f lr=%.3e grad_norm=%.3f", state.global_step,
                             total_steps, epoch_float, values["loss"], values["learning_rate"], values["grad_norm"])
                    metrics.write("train", state.global_step, values)
                    progress.set_postfix(loss=f"{values['loss']:.3f}")
                    window_loss, window_batches = 0.0, 0

                end_of_epoch = state.batches_done_in_epoch >= len(train_loader)
                if (cfg.eval_steps and state.global_step % cfg.eval_steps == 0) or (
                        end_of_epoch and cfg.eval_at_epoch_end) or state.global_step == total_steps:
                    evaluate_and_track(epoch_float)
                if end_of_epoch:
                    state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
                if (cfg.save_steps and state.global_step % cfg.save_steps == 0) or state.global_step == total_steps:
                    checkpoint.save(accelerator, ckpt_root, state.global_step, asdict(state), cfg.save_total_limit)
                if state.global_step >= total_steps:
                    break
            if state.batches_done_in_epoch >= len(train_loader):  # ended on a batch that made no step
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
    progress.close()
    if state.skipped_nonfinite:
        log.warning("%d step(s) skipped for a non-finite loss", state.skipped_nonfinite)

    return _ship_model(cfg, accelerator, model, processor, eval_loader, collator, texts, state, run_dir)


def _ship_model(cfg, accelerator, model, processor, eval_loader, collator, texts, state, run_dir) -> EvalResult:
    """Write model/ (the best or last weights + processor) and score exactly what was shipped."""
    unwrapped = accelerator.unwrap_model(model)
    best_dir = os.path.join(run_dir, "checkpoints", "best")
    if cfg.final_model == FinalModel.best and os.path.isdir(best_dir):
        log.info("Shipping the best weights (step %s, eval WER %.4f)", state.best_step, state.best_wer)
        best = Wav2Vec2ForCTC.from_pretrained(best_dir)
        unwrapped.load_state_dict(best.state_dict())
        del best
    model_dir = os.path.join(run_dir, "model")
    weights = accelerator.get_state_dict(model)  # in every process: gathers FSDP/ZeRO-3 shards
    if accelerator.is_main_process:
        def write(path):
            unwrapped.save_pretrained(path, state_dict=weights)
            processor.save_pretrained(path)
        checkpoint.replace_dir(write, model_dir)
    accelerator.wait_for_everyone()
    result = run_eval(model, eval_loader, collator, processor.tokenizer, texts, accelerator)
    log.info("Final model %s: eval WER %.4f, CER %.4f on %d utterances", model_dir, result.wer, result.cer,
             len(result.rows))
    return result


def _finite_everywhere(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    finite = torch.isfinite(loss.detach()).all().reshape(1).float()
    if accelerator.num_processes > 1:  # every process must skip together, or DDP waits forever
        finite = accelerator.gather(finite).min()
    return bool(finite.item())
