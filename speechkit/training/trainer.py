"""The training loop (conf/trainer), on accelerate, read top to bottom: train() runs setup() (loaders, optimizer,
schedule, resume), loop() (the steps, logging windows, evaluations, checkpoints) and ship() (model/ and its final
eval). It knows nothing of the task, the model family or the kind of data: the loss, the scores and what ships
beside the weights come from the task (speechkit/tasks/), the fast paths from the model's family
(speechkit/models/), the batches from one interface over a split and a stream (speechkit/training/batches.py)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import PreTrainedModel

from speechkit.config import ConfigError, FinalModel, TrainerConfig
from speechkit.data import SpeechDataset
from speechkit.data.samplers import eval_loader, train_batch_sampler
from speechkit.data.streaming import StreamedBatches
from speechkit.hardware import loader_settings, optimizer_settings, shard_by_layer
from speechkit.models.adapters import FullModel
from speechkit.plots import training_curves
from speechkit.rundir import RunDir
from speechkit.tasks.scoring import EvalResult
from speechkit.training import checkpoint
from speechkit.training.averaging import WeightAverage, average_of, swap_in
from speechkit.training.batches import SplitBatches, StreamBatches, anywhere
from speechkit.training.optim import make_optimizer, make_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """What a checkpoint needs beyond accelerate's own state to continue exactly where it stopped."""

    global_step: int = 0
    data: Optional[dict] = None  # where the training batches stand (speechkit/training/batches.py: position())
    best_rank: Optional[List[float]] = None  # the task's ranking key of the best evaluation (smaller is better)
    best_summary: Optional[str] = None
    best_step: Optional[int] = None
    skipped_nonfinite: int = 0
    total_steps: int = 0
    schedule: Optional[dict] = None  # the keys that decide which batch and learning rate come at each step

    @classmethod
    def read(cls, saved: dict) -> "TrainerState":
        """A checkpoint's trainer_state.json, written by this release or an earlier one (which kept a split's epoch
        and batch, or a stream's positions and drops, as fields of their own)."""
        saved = dict(saved)
        if "data" not in saved:
            epoch, done = saved.pop("epoch", 0), saved.pop("batches_done_in_epoch", 0)
            positions, drops = saved.pop("stream_positions", None), saved.pop("stream_drops", None)
            saved["data"] = {"positions": positions, "drops": drops or []} if positions \
                else {"epoch": epoch, "batches_done": done}
        return cls(**saved)


class MetricsFile:
    """metrics.jsonl: one JSON object per logged train window or evaluation (main process only); the same
    values go to the accelerate trackers (logger=wandb) when there are any."""

    def __init__(self, path: str, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator

    def write(self, kind: str, step: int, values: dict) -> None:
        """`kind`: train, eval, or eval_set (one of eval_sets, named by values["eval_set"]: its scores go to the
        trackers as eval_<name>_wer ...)."""
        if self.accelerator.trackers:  # accelerate.log is a no-op off the main process
            if kind == "eval_set":  # eval_wer of the set "noisy": eval_noisy_wer
                logged = {f"eval_{values['eval_set']}_{k.removeprefix('eval_')}": v for k, v in values.items()
                          if k not in ("eval_set", "epoch")}
            else:
                logged = {k if k.startswith(kind) or k == "epoch" else f"{kind}_{k}": v for k, v in values.items()}
            self.accelerator.log(logged, step=step)
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values, "time": round(time.time(), 3)}) + "\n")


class Throughput:
    """What one logging window of training did and cost: seconds of real audio trained on (`audio_s`), training time
    (`train_s`, evaluations and checkpoints excluded), their ratio (`audio_s_per_s`), the share of padded samples
    (`padding`) and the share of time spent waiting for the next batch (`data_wait`). Host-side counters only:
    nothing here waits for the device."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.audio = self.padded = self.waited = self.excluded = 0.0
        self.started = time.perf_counter()

    def timed(self, batches):
        """The batches of `batches`, the time spent waiting for each one counted."""
        it = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t
            yield batch

    def count(self, batch: dict) -> None:
        self.audio += batch["audio_samples"]
        self.padded += batch["padded_samples"]

    def values(self, accelerator: Accelerator, sampling_rate: int) -> dict:
        """The window's figures, summed (time: averaged) over processes."""
        seconds = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        window = torch.tensor([self.audio, self.padded, self.waited, seconds], dtype=torch.float64)
        if accelerator.num_processes > 1:
            window = accelerator.reduce(window.to(accelerator.device), "sum").cpu()
        audio, padded, waited, seconds = window.tolist()
        seconds /= accelerator.num_processes
        return {"audio_s": audio / sampling_rate, "train_s": seconds,
                "audio_s_per_s": audio / sampling_rate / seconds,
                "padding": 1.0 - audio / padded if padded else 0.0,
                "data_wait": waited / accelerator.num_processes / seconds}


def train(cfg: TrainerConfig, accelerator: Accelerator, task, model: PreTrainedModel,
          train_set: SpeechDataset | StreamedBatches, eval_set: SpeechDataset, run_dir: str,
          adapter: Optional[FullModel] = None, eval_sets: Optional[Dict[str, SpeechDataset]] = None) -> EvalResult:
    """Fine-tune `model` for `task` (speechkit/tasks/), write checkpoints/, best/ and model/ under `run_dir`; returns
    the shipped model's eval (its `eval_sets`: the shipped model on each other evaluation set). `adapter`: what of
    the model trains, is checkpointed and ships (conf/adapter, speechkit/models/adapters.py; the whole model by
    default); `eval_sets`: more evaluation sets by name, scored at every evaluation (trainer.best_eval_set may name
    the one that picks the best checkpoint). Three pieces, in the order they run: setup, the loop, shipping."""
    run = setup(cfg, accelerator, task, model, train_set, eval_set, run_dir, adapter or FullModel(), eval_sets or {})
    loop(cfg, accelerator, task, run)
    return ship(cfg, accelerator, task, run)


@dataclass
class Run:
    """What setup() prepares and the loop and shipping share."""

    model: PreTrainedModel  # prepared by accelerate (wrapped under DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: SplitBatches | StreamBatches  # the training batches: one interface over a split and a stream
    eval_loader: torch.utils.data.DataLoader
    eval_set: SpeechDataset
    state: TrainerState
    dirs: RunDir
    metrics: MetricsFile
    sampling_rate: int
    adapter: FullModel = field(default_factory=FullModel)  # what checkpoints, best/ and model/ hold
    # the other evaluation sets (eval_sets): name -> (loader, dataset), and the one that picks the best checkpoint
    eval_sets: Dict[str, Tuple[torch.utils.data.DataLoader, SpeechDataset]] = field(default_factory=dict)
    best_eval_set: Optional[str] = None
    ema: Optional[WeightAverage] = None  # trainer.ema_decay: the moving average of the weights

    @property
    def judged_by(self) -> str:
        """The evaluation that chooses between weights, as the log names it: eval, or eval[<name>]."""
        return f"eval[{self.best_eval_set}]" if self.best_eval_set else "eval"


# ------------------------------------------------------------------------------------------------------ setup
def setup(cfg: TrainerConfig, accelerator: Accelerator, task, model: PreTrainedModel,
          train_set: SpeechDataset | StreamedBatches, eval_set: SpeechDataset, run_dir: str,
          adapter: FullModel, eval_sets: Dict[str, SpeechDataset]) -> Run:
    """Loaders, optimizer and schedule, prepared by accelerate; the state of a checkpoint when resuming. A stream
    (dataset.streaming) brings its own batches and is not prepared: each process already reads its own share."""
    set_seed(cfg.seed)
    train_set.seed = cfg.seed  # per-clip random draws (a task's random crops) follow trainer.seed too
    sampling_rate = train_set.sampling_rate
    # Workers and pinned memory as suits the device. Loaders draw worker seeds from their own generators, not the
    # global one, so starting an iterator (as a resumed run does mid-epoch) leaves the dropout/masking random
    # stream exactly as an uninterrupted run has it.
    loading = loader_settings(accelerator, cfg.num_workers, augmenting=train_set.augment is not None)
    evaluation = eval_loader(eval_set, task.collator(False), cfg.eval_batch_size, cfg.seed, **loading)
    more = {name: (accelerator.prepare(eval_loader(dataset, task.collator(False), cfg.eval_batch_size, cfg.seed,
                                                   **loading)), dataset) for name, dataset in eval_sets.items()}
    optimizer = make_optimizer(cfg, model, optimizer_settings(accelerator))
    if cfg.fast_paths:
        applied = task.family.fast_paths(model, accelerator.device)
        if applied:
            log.info("Fast paths: %s", "; ".join(applied))
    if cfg.compile:
        model.compile(dynamic=True)  # in place: parameter names, and so checkpoints, stay those of the plain model
    shard_by_layer(accelerator, task.family.layer_classes(model), type(model).__name__)  # FSDP: the family's layers
    if isinstance(train_set, StreamedBatches):
        model, optimizer, evaluation = accelerator.prepare(model, optimizer, evaluation)
        batches = StreamBatches(train_set, task.collator(True), loading, cfg.seed, accelerator)
    else:
        sampler = train_batch_sampler(train_set.lengths, cfg.batch_size, cfg.batch_duration_s, sampling_rate,
                                      cfg.seed, cfg.group_by_length, task.padded_to, train_set.lengths_at)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=task.collator(True),
                                             generator=torch.Generator().manual_seed(cfg.seed), **loading)
        model, optimizer, loader, evaluation = accelerator.prepare(model, optimizer, loader, evaluation)
        batches = SplitBatches(loader, sampler, accelerator)
    # A stream has no length: validation asks for trainer.max_steps.
    steps_per_epoch = math.ceil(batches.steps_per_epoch / cfg.gradient_accumulation_steps) \
        if batches.steps_per_epoch else None
    total_steps = cfg.max_steps or math.ceil(cfg.num_epochs * steps_per_epoch)
    # Stepped by hand once per optimizer step (not prepared: accelerate would step it once per process).
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    adapter.keep_in_checkpoints(accelerator)  # an adapter's checkpoints: its trained weights only

    ema = WeightAverage(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    dirs = RunDir(run_dir)
    state = TrainerState(total_steps=total_steps,
                         schedule=schedule_keys(cfg, accelerator, train_set, total_steps, adapter))
    resume_from = checkpoint.resolve_resume(cfg.resume, dirs.checkpoints)
    if resume_from:
        saved = TrainerState.read(checkpoint.load_state(resume_from))
        check_same_schedule(resume_from, saved, state)  # before loading anything: a refusal changes nothing
        accelerator.load_state(resume_from)
        if ema is not None:
            ema.load(resume_from)
        state = saved
        batches.restore(state.data)
        log.info("Resumed from %s at step %d (%s)", resume_from, state.global_step, batches.describe())
    elif cfg.resume == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", dirs.checkpoints)

    per_device = f"{cfg.batch_duration_s:g} s of audio" if cfg.batch_duration_s else f"{cfg.batch_size} clips"
    log.info("Training %d steps: %s examples, %s per batch and device x %d process(es) x %d accumulation, "
             "%s steps/epoch; optimizer %s, schedule %s; data loading: %s", total_steps,
             len(train_set) if steps_per_epoch else "streamed", per_device, accelerator.num_processes,
             cfg.gradient_accumulation_steps, steps_per_epoch or "streamed", cfg.optimizer.value,
             cfg.scheduler.value, loading if steps_per_epoch else f"a stream, {train_set.window} rows a window")
    return Run(model=model, optimizer=optimizer, scheduler=scheduler, batches=batches, eval_loader=evaluation,
               eval_set=eval_set, state=state, dirs=dirs, metrics=MetricsFile(dirs.metrics, accelerator),
               sampling_rate=sampling_rate, adapter=adapter, eval_sets=more, best_eval_set=cfg.best_eval_set,
               ema=ema)


def schedule_keys(cfg: TrainerConfig, accelerator: Accelerator, train_set, total_steps: int, adapter) -> dict:
    """What decides the batch and the learning rate of every step: a resumed run must have each of them as the
    checkpoint was made, or it would continue a different run than the one it claims to."""
    names = ["seed", "max_steps", "num_epochs", "batch_size", "batch_duration_s", "gradient_accumulation_steps",
             "group_by_length", "optimizer", "learning_rate", "weight_decay", "scheduler", "warmup_steps",
             "ema_decay", "best_eval_set"]
    names.remove("num_epochs" if cfg.max_steps else "max_steps")  # max_steps, when set, decides the length
    names.remove("batch_size" if cfg.batch_duration_s else "batch_duration_s")  # batches by duration, or by count
    keys = {f"trainer.{k}": getattr(cfg, k) for k in names}
    keys = {k: getattr(v, "value", v) for k, v in keys.items()}
    keys["processes"] = accelerator.num_processes
    keys["training examples"] = None if isinstance(train_set, StreamedBatches) else len(train_set)
    keys["total steps"] = total_steps
    keys["augmentation"] = train_set.augment.describe() if train_set.augment is not None else "none"
    keys["adapter"] = adapter.describe()
    return keys


def check_same_schedule(path: str, saved: TrainerState, now: TrainerState) -> None:
    """Refuse (one line naming every key that changed) a resume whose schedule is not the checkpoint's. A
    checkpoint of an earlier release kept only its total step count."""
    before = saved.schedule or {"total steps": saved.total_steps}
    changed = [f"{key}={before[key]} then, {now.schedule[key]} now" for key in before
               if key in now.schedule and before[key] != now.schedule[key]]
    if changed:
        raise ConfigError(f"trainer.resume: {path} was made with another schedule ({'; '.join(changed)}); keep "
                          "these as they were to continue it, or train into a new run dir (hydra.run.dir)")


# ------------------------------------------------------------------------------------------------------- loop
def loop(cfg: TrainerConfig, accelerator: Accelerator, task, run: Run) -> None:
    """Optimizer steps until `state.total_steps`, with logging windows, evaluations and checkpoints on schedule."""
    model, optimizer, scheduler, state = run.model, run.optimizer, run.scheduler, run.state
    total_steps = state.total_steps
    if state.global_step >= total_steps:  # resumed from the last checkpoint (model/ was not written): ship only
        log.info("All %d steps were trained before this resume: writing the model only", total_steps)
        return
    model.train()
    unwrapped = accelerator.unwrap_model(model)
    progress = tqdm(total=total_steps, initial=state.global_step, desc="Training", dynamic_ncols=True,
                    disable=not (cfg.progress_bar and accelerator.is_main_process))
    # The logged loss and the non-finite flag stay on the device; the host reads them once per logging window and
    # once per optimizer step respectively, never per micro-batch.
    window_loss = torch.zeros((), device=accelerator.device)
    window_batches = torch.zeros((), device=accelerator.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    clock = Throughput()
    with logging_redirect_tqdm():
        for batch in clock.timed(run.batches):
            if batch is None:  # every item of it vanished since start-up
                continue
            clock.count(batch)
            with accelerator.accumulate(model):
                loss = task.forward(model, batch).loss
                finite = torch.isfinite(loss.detach())
                nonfinite |= ~finite
                # A non-finite loss is backpropagated too (its gradients are thrown away with the whole step below):
                # skipping it here would need its value on the host now.
                accelerator.backward(loss)
                window_loss += torch.where(finite, loss.detach().float(), 0.0)
                window_batches += finite.float()
                if accelerator.sync_gradients:
                    grad_norm = None
                    if anywhere(nonfinite, accelerator):
                        state.skipped_nonfinite += 1
                        log.warning("non-finite loss at step %d: step skipped (%d so far)", state.global_step + 1,
                                    state.skipped_nonfinite)
                    else:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        if run.ema is not None:
                            run.ema.update(unwrapped)
                    optimizer.zero_grad(set_to_none=True)
                    nonfinite.zero_()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.global_step += 1
            progress.update(1)
            epoch = run.batches.progress

            if state.global_step % cfg.logging_steps == 0 or state.global_step in (1, total_steps):
                losses = torch.stack([window_loss, window_batches])
                if accelerator.num_processes > 1:  # every process's batches, not only the main one's
                    losses = accelerator.reduce(losses, "sum")
                loss_sum, loss_count = losses.tolist()
                speed = clock.values(accelerator, run.sampling_rate)
                values = {"epoch": round(epoch, 4), "loss": loss_sum / max(loss_count, 1),
                          "learning_rate": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                          "skipped_nonfinite": state.skipped_nonfinite, **speed}
                # parsed by SageMaker's metric definitions (speechkit/sagemaker/launch.py)
                log.info("train step=%d/%d epoch=%.2f loss=%.4f lr=%.3e grad_norm=%.3f audio_s_per_s=%.2f "
                         "padding=%.3f data_wait=%.3f", state.global_step, total_steps, epoch, values["loss"],
                         values["learning_rate"], values["grad_norm"], values["audio_s_per_s"], values["padding"],
                         values["data_wait"])
                run.metrics.write("train", state.global_step, values)
                progress.set_postfix(loss=f"{values['loss']:.3f}")
                window_loss.zero_()
                window_batches.zero_()
                clock.reset()

            paused = time.perf_counter()
            end_of_epoch = run.batches.step_done()
            if (cfg.eval_steps and state.global_step % cfg.eval_steps == 0) or (
                    end_of_epoch and cfg.eval_at_epoch_end) or state.global_step == total_steps:
                evaluate_and_track(accelerator, task, run, epoch)
            if (cfg.save_steps and state.global_step % cfg.save_steps == 0) or state.global_step == total_steps:
                state.data = run.batches.position()  # in every process: a stream gathers every process's
                checkpoint.save(accelerator, run.dirs.checkpoints, state.global_step, asdict(state),
                                cfg.save_total_limit, run.ema.save if run.ema is not None else None)
            clock.excluded += time.perf_counter() - paused
            if state.global_step >= total_steps:
                break
    progress.close()
    if state.skipped_nonfinite:
        log.warning("%d step(s) skipped for a non-finite loss", state.skipped_nonfinite)


def evaluate_and_track(accelerator: Accelerator, task, run: Run, epoch_float: float) -> None:
    """Score the eval split (and the other evaluation sets), log them, keep the weights in checkpoints/best/ when they
    are the best so far, and redraw curves.png."""
    state = run.state
    result = task.evaluate(run.model, run.eval_loader, run.eval_set, accelerator)
    # e.g. "eval step=20 epoch=0.25 eval_loss=1.2345 eval_wer=0.5123 eval_cer=0.2000 (80 utterances)", and
    # "eval[noisy] step=20 ..." for an eval set: parsed by SageMaker's metric definitions (sagemaker/launch.py)
    scores = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
    log.info("eval step=%d epoch=%.2f %s (%d %s)", state.global_step, epoch_float, scores, len(result.rows),
             task.unit)
    run.metrics.write("eval", state.global_step, {"epoch": round(epoch_float, 4), **result.metrics})
    chosen = result
    for name, scored in score_eval_sets(accelerator, task, run).items():
        scores = " ".join(f"{k}={v:.4f}" for k, v in scored.metrics.items() if isinstance(v, float))
        log.info("eval[%s] step=%d epoch=%.2f %s (%d %s)", name, state.global_step, epoch_float, scores,
                 len(scored.rows), task.unit)
        run.metrics.write("eval_set", state.global_step, {"eval_set": name, "epoch": round(epoch_float, 4),
                                                          **scored.metrics})
        if name == run.best_eval_set:
            chosen = scored
    # The task's ranking wins (lowest WER, CER breaking ties; highest accuracy ...), on trainer.best_eval_set's
    # evaluation. Gathered values: the same in every process, so all of them take this branch together.
    if state.best_rank is None or tuple(chosen.rank) < tuple(state.best_rank):
        state.best_rank, state.best_summary = list(chosen.rank), f"{run.judged_by} {chosen.summary}"
        state.best_step = state.global_step
        weights = accelerator.get_state_dict(run.model)  # in every process: gathers FSDP/ZeRO-3 shards
        checkpoint.write_dir(accelerator, lambda path: run.adapter.save_best(accelerator.unwrap_model(run.model),
                                                                            path, weights),
                             run.dirs.best, run.dirs.checkpoints)
    if accelerator.is_main_process:
        training_curves(run.dirs.metrics, run.dirs.curves, {s.key: s.name for s in task.scores(task.cfg)},
                        state.best_step)


# ------------------------------------------------------------------------------------------------------- ship
def ship(cfg: TrainerConfig, accelerator: Accelerator, task, run: Run) -> EvalResult:
    """Write model/ (the best or last weights, or an average of them that scores better, + the task's processor) and
    score exactly what was shipped, on the eval split and every other evaluation set."""
    unwrapped = accelerator.unwrap_model(run.model)
    if cfg.final_model == FinalModel.best and os.path.isdir(run.dirs.best):
        log.info("Shipping the best weights (step %s, %s)", run.state.best_step, run.state.best_summary)
        run.adapter.load_best(unwrapped, run.dirs.best)
    judged = averaged(cfg, accelerator, task, run)  # an average of the weights, where it scores better
    folded = run.adapter.fold(unwrapped)  # LoRA merged into the weights: what ships is scored after
    result = judged if judged is not None and run.best_eval_set is None and not folded else \
        task.evaluate(run.model, run.eval_loader, run.eval_set, accelerator)
    result.eval_sets = score_eval_sets(accelerator, task, run)
    weights = accelerator.get_state_dict(run.model)  # in every process: gathers FSDP/ZeRO-3 shards

    def write(path):
        run.adapter.save(unwrapped, path, weights)
        task.save(path)
    checkpoint.write_dir(accelerator, write, run.dirs.model, run.dirs.checkpoints)
    log.info("Final model %s: eval %s on %d %s%s", run.dirs.model, result.summary, len(result.rows), task.unit,
             "".join(f"; eval[{name}] {r.summary}" for name, r in result.eval_sets.items()))
    return result


def score_eval_sets(accelerator: Accelerator, task, run: Run) -> Dict[str, EvalResult]:
    """The model now, scored on each other evaluation set (eval_sets)."""
    return {name: task.evaluate(run.model, loader, dataset, accelerator)
            for name, (loader, dataset) in run.eval_sets.items()}


def judge(accelerator: Accelerator, task, run: Run) -> EvalResult:
    """The evaluation that chooses between weights: trainer.best_eval_set's, else the eval split's."""
    loader, dataset = run.eval_sets[run.best_eval_set] if run.best_eval_set else (run.eval_loader, run.eval_set)
    return task.evaluate(run.model, loader, dataset, accelerator)


def averaged(cfg: TrainerConfig, accelerator: Accelerator, task, run: Run) -> Optional[EvalResult]:
    """The weight averages asked for (trainer.ema_decay, trainer.average_last), each judged against the weights in
    the model now: one that scores better stays in the model, the others are swapped out again. Returns the judging
    evaluation of the weights kept, or None when no average was asked for."""
    unwrapped = accelerator.unwrap_model(run.model)
    candidates = []
    if run.ema is not None:
        candidates.append((f"the moving average of the weights (decay {cfg.ema_decay:g}, "
                           f"{run.ema.updates} updates)", run.ema.state()))
    if cfg.average_last:
        kept = checkpoint.complete_checkpoints(run.dirs.checkpoints)[-cfg.average_last:]
        if len(kept) < 2:
            log.info("trainer.average_last=%d: %d checkpoint(s) to average, none averaged", cfg.average_last,
                     len(kept))
        else:
            candidates.append((f"the average of the last {len(kept)} checkpoints "
                               f"({', '.join(os.path.basename(k) for k in kept)})", average_of(kept)))
    if not candidates:
        return None
    result = judge(accelerator, task, run)
    chosen = f"the {cfg.final_model.value} weights"
    for name, weights in candidates:
        replaced = swap_in(unwrapped, weights)
        scored = judge(accelerator, task, run)
        better = tuple(scored.rank) < tuple(result.rank)
        log.info("Weight averaging: %s scores %s %s against %s for %s: %s", name, run.judged_by, scored.summary,
                 result.summary, chosen, "shipped instead" if better else "not shipped")
        if better:
            result, chosen = scored, name
        else:
            swap_in(unwrapped, replaced)
    return result
