"""Training speed: speechkit's loop against the Hugging Face `Trainer` run as `run_speech_recognition_ctc.py` runs it.

Both systems train the same model architecture (random init, same seed) with the same optimizer settings on the same
audio for whole epochs; each runs in a fresh process with a cold datasets cache, so its own data preparation counts.
The Trainer gets its data the way the example script prepares it (audio decoded, resampled and normalized up front
with `datasets.map`, `train_sampling_strategy="group_by_length"`, `DataCollatorCTCWithPadding`); speechkit runs its
own path (`speechkit.commands.train.run`, as `python train.py` does) with batches of a duration budget equal, on
average, to the Trainer's batch size, so both take about the same number of steps. A third system, `speechkit_plain`
(`--systems speechkit,trainer,speechkit_plain`), is speechkit with `trainer.fast_paths=false`: what those pay,
measured in the same invocation. `steps_alone` is the ceiling: speechkit's set-up and batches, all made before the
clock starts, then only the optimizer steps timed (forward, backward, clipping, optimizer, schedule): the model's own
compute, which no loop feeding it these batches can beat; a system's throughput over it says how much of the
machine's time went to the model.

Per system: training throughput (seconds of real audio per second, padding excluded, evaluation excluded), the
padding fraction, the fraction of training time spent waiting for the next batch, peak RSS, time from launch to the
first optimizer step, end-to-end time from launch to the last step (data preparation included), the mean training
loss over the last quarter of the audio, and on GPUs the peak device memory and MFU. Then the ratios.

    python benchmarks/throughput.py                                  # tiny model, demo corpus, 1 epoch, CPU
    python benchmarks/throughput.py --model wav2vec2_base --num-train 160
    python benchmarks/throughput.py --model wav2vec2_base --device cuda --precision bf16
    python benchmarks/throughput.py --model xlsr_53 --device cuda --precision bf16 --gradient-checkpointing

Writes <out>/throughput-<model>-<device>.json and .md (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
# speechkit_plain: speechkit with trainer.fast_paths=false; speechkit_ungrouped: with trainer.group_by_length=false;
# speechkit_grouped: with trainer.group_by_length=true (for a Whisper, whose batches are not grouped by default);
# speechkit_lora: with adapter=lora (the model frozen, low-rank updates and the head trained); steps_alone: speechkit's
# optimizer steps on its own batches, made before the clock starts, with nothing else timed (the model's compute: the
# most any loop feeding these batches to this model could reach)
SYSTEMS = ("speechkit", "trainer", "speechkit_plain", "speechkit_ungrouped", "speechkit_grouped", "speechkit_lora",
           "steps_alone")
VARIANTS = {"speechkit_plain": ["trainer.fast_paths=false"], "speechkit_ungrouped": ["trainer.group_by_length=false"],
            "speechkit_grouped": ["trainer.group_by_length=true"], "speechkit_lora": ["adapter=lora"]}
DEFAULT_SYSTEMS = ("speechkit", "trainer")
# Dense bf16 tensor-core peaks (TFLOP/s), for MFU; --peak-tflops for any other device.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "MI300X": 1307.0, "MI250": 362.0}


# ------------------------------------------------------------------------------------------------ parent
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="a conf/model option; pretrained ones are built from their "
                                                    "architecture with random init (tiny, wav2vec2_base, xlsr_53)")
    p.add_argument("--data", default="demo", help="'demo' (synthesized offline) or an audiofolder with train/ and "
                                                  "test/ sub-folders (metadata.csv: file_name,transcription)")
    p.add_argument("--num-train", type=int, default=1200, help="demo corpus: training clips")
    p.add_argument("--num-test", type=int, default=16, help="demo corpus: held-out clips (speechkit scores them "
                                                            "once after training; not timed)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "rocm"])
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="every system")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None, help="budget: stop both after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="the Trainer's clips per batch")
    p.add_argument("--batch-duration-s", type=float, default=None,
                   help="speechkit's seconds of audio per batch (default: batch size x mean clip duration)")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help="comma-separated, from: " + ",".join(SYSTEMS) + " (speechkit_plain: speechkit without its "
                        "fast paths, speechkit_ungrouped / speechkit_grouped: with batches grouped by duration off / "
                        "on, to measure what each pays; steps_alone: the model's optimizer steps alone)")
    p.add_argument("--repeats", type=int, default=1, help="run the systems this many times, in turn (A B A B ...); "
                   "each system's table figures are its median-throughput run's, and every run's throughput and each "
                   "round's ratios are reported (machines of this kind vary by several percent from run to run)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s, for MFU")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare_data(args) -> Path:
    """The audiofolder both systems read (the demo corpus is synthesized once and cached, outside the timings)."""
    if args.data != "demo":
        root = Path(args.data).expanduser().resolve()
        for split in ("train", "test"):
            if not (root / split / "metadata.csv").is_file():
                sys.exit(f"--data: {root / split / 'metadata.csv'} not found (an audiofolder with train/ and test/)")
        return root
    sys.path.insert(0, str(REPO))
    from speechkit.data.demo_corpus import ensure_corpus

    from omegaconf import OmegaConf

    cfg = compose(["dataset=demo_en", f"dataset.demo.num_train={args.num_train}",
                   f"dataset.demo.num_test={args.num_test}"])
    return Path(ensure_corpus(OmegaConf.to_object(cfg).dataset))


def mean_duration(root: Path) -> float:
    import soundfile as sf

    with open(root / "train" / "metadata.csv", newline="") as f:
        files = [row["file_name"] for row in csv.DictReader(f)]
    return sum(sf.info(str(root / "train" / name)).duration for name in files) / len(files)


def run_system(system: str, spec: dict) -> dict:
    """One system in a fresh process with fresh caches; returns what it measured."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    spec = {**spec, "work": str(work), "launched": time.time()}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "datasets"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {system} ===", flush=True)
    done = subprocess.run([sys.executable, __file__, "--child", system, "--spec", str(work / "spec.json")],
                          env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{system} failed (exit {done.returncode}); its work dir: {work}")
    return json.loads((work / "result.json").read_text())


ROWS = [  # (key, label, format, ratio: higher is better?)
    ("audio_s_per_s", "training throughput (audio s / s)", "{:.1f}", True),
    ("throughput_runs", "throughput of each run, in turn", "{:.1f}", None),
    ("padding", "padding fraction", "{:.3f}", None),
    ("data_wait", "data wait (share of training time)", "{:.3f}", None),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}", False),
    ("first_step_s", "launch to first optimizer step (s)", "{:.1f}", False),
    ("end_to_end_s", "launch to last step, data prep included (s)", "{:.1f}", False),
    ("train_s", "training loop (s)", "{:.1f}", False),
    ("steps", "optimizer steps", "{:d}", None),
    ("trainable_params", "parameters trained", "{:,}", None),
    ("total_params", "parameters in all", "{:,}", None),
    ("audio_s", "audio trained on (s)", "{:.0f}", None),
    ("final_loss", "mean loss, last quarter of the audio", "{:.3f}", None),
    ("heldout_loss", "held-out loss per token after training", "{:.3f}", None),
    ("peak_device_mb", "peak device memory (MB)", "{:.0f}", False),
    ("tflops", "model TFLOP/s", "{:.2f}", True),
    ("mfu", "MFU (share of peak bf16)", "{:.3f}", True),
]


def markdown(results: Dict[str, dict], header: str) -> str:
    systems = list(results)
    against = [s for s in systems if s != "speechkit"] if "speechkit" in systems else []  # ratio columns
    names = {"trainer": "Trainer"}  # the others as --systems names them
    lines = [header, "", "| | " + " | ".join(systems) + " |" +
             "".join(f" speechkit / {names.get(s, s)} |" for s in against),
             "|---" * (len(systems) + 1 + len(against)) + "|"]
    for key, label, fmt, _ in ROWS:
        values = [results[s].get(key) for s in systems]
        if all(v is None for v in values):
            continue
        cells = [(", ".join(fmt.format(x) for x in v) if isinstance(v, list) else fmt.format(v)) if v is not None
                 else "–" for v in values]
        for other in against:
            a, b = results["speechkit"].get(key), results[other].get(key)
            if isinstance(a, list) and isinstance(b, list):  # round by round
                cells.append(", ".join(f"{x / y:.2f}x" for x, y in zip(a, b)))
            else:
                cells.append(f"{a / b:.2f}x" if a is not None and b and key not in ("steps", "audio_s", "total_params")
                             else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        return child(args.child, json.loads(Path(args.spec).read_text()))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        sys.exit(f"--systems: unknown {unknown}; choose from {list(SYSTEMS)}")
    root = prepare_data(args)
    mean_s = mean_duration(root)
    spec = {k: v for k, v in vars(args).items() if k not in ("child", "spec", "out", "systems")}
    seq2seq = head_of_model(args.model) == "seq2seq"
    # A fixed-window model (Whisper) pads every clip to its window: both systems take batch_size clips a batch.
    spec.update(data=str(root), mean_clip_s=mean_s, seq2seq=seq2seq,
                batch_duration_s=None if seq2seq else args.batch_duration_s or round(args.batch_size * mean_s, 1))
    runs: Dict[str, List[dict]] = {system: [] for system in systems}
    for _ in range(args.repeats):  # in turn, so that a slow spell of the machine falls on every system alike
        for system in systems:
            runs[system].append(run_system(system, spec))
    results = {system: median_run(runs[system]) for system in systems}
    device = next(iter(results.values()))["device"]
    given = argv if argv is not None else sys.argv[1:]
    summary = {"command": " ".join(["python", "benchmarks/throughput.py", *given]),
               "spec": spec, "device": device, "results": results, "runs": runs}
    for other, name in (("trainer", "ratios"), ("speechkit_plain", "ratios_fast_paths"),
                        ("speechkit_ungrouped", "ratios_grouped"), ("speechkit_grouped", "ratios_ungrouped"),
                        ("speechkit_lora", "ratios_lora"),
                        ("steps_alone", "ratios_steps_alone")):
        if "speechkit" in results and other in results:  # speechkit / the other system
            sk, tr = results["speechkit"], results[other]
            summary[name] = {k: sk[k] / tr[k] for k in ("audio_s_per_s", "end_to_end_s", "first_step_s",
                                                        "peak_rss_mb", "final_loss", "heldout_loss",
                                                        "trainable_params",
                                                        "peak_device_mb") if sk.get(k) and tr.get(k)}
    batching = (f"both {args.batch_size} clips a batch (each padded to the model's window)" if seq2seq else
                f"Trainer batch {args.batch_size} clips, speechkit batch {spec['batch_duration_s']:g} s of audio")
    repeats = f"; {args.repeats} runs of each, in turn, the median one's figures" if args.repeats > 1 else ""
    header = (f"`{summary['command']}` on {device}: model {args.model}, {args.epochs:g} epoch(s) of "
              f"{results[systems[0]]['clips']} clips (mean {mean_s:.2f} s), precision {args.precision}; {batching}"
              f"{repeats}")
    table = markdown(results, header)
    os.makedirs(args.out, exist_ok=True)
    stem = Path(args.out) / f"throughput-{args.model}-{device.split(' ')[0].lower()}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    stem.with_suffix(".md").write_text(table)
    print("\n" + table + f"\nWritten: {stem}.json, {stem}.md")
    return summary


def median_run(runs: List[dict]) -> dict:
    """The run of median throughput (of an even count, the slower middle one), with every run's throughput."""
    ranked = sorted(runs, key=lambda r: r["audio_s_per_s"])
    median = ranked[(len(ranked) - 1) // 2]
    return {**median, "throughput_runs": [r["audio_s_per_s"] for r in runs]} if len(runs) > 1 else median


# ------------------------------------------------------------------------------------------------ children
def compose(overrides: List[str]):
    """speechkit's config as `python train.py <overrides>` composes it (a DictConfig)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    sys.path.insert(0, str(REPO))
    from speechkit.cli import register_configs

    register_configs()
    if not any(o.startswith("run_dir=") for o in overrides):
        overrides = [*overrides, "run_dir=unused"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def head_of_model(model: str) -> str:
    """The speech-recognition head `model` gets: "ctc" or "seq2seq" (Whisper)."""
    from omegaconf import OmegaConf

    from speechkit.models import model_config

    cfg = OmegaConf.to_object(compose([f"model={model}", "model.name_or_path=null"] if model != "tiny"
                                      else [f"model={model}"]))
    return model_config(cfg.model, ("ctc", "seq2seq"))[1]


def speechkit_overrides(spec: dict, run_dir: str) -> List[str]:
    """The one speechkit config both systems take their model and optimizer settings from."""
    hw = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "rocm": "rocm"}[spec["device"]]
    out = [f"model={spec['model']}", f"hw={hw}", f"hw.mixed_precision={spec['precision']}",
           "dataset=audiofolder", f"dataset.path={spec['data']}", "dataset.eval_split=test",
           f"trainer.num_epochs={spec['epochs']}", f"trainer.learning_rate={spec['learning_rate']}",
           f"trainer.warmup_steps={spec['warmup_steps']}", f"trainer.weight_decay={spec['weight_decay']}",
           f"trainer.seed={spec['seed']}", f"trainer.batch_size={spec['batch_size']}",
           f"trainer.batch_duration_s={spec['batch_duration_s'] or 'null'}",
           f"trainer.logging_steps={spec['logging_steps']}",
           "trainer.eval_at_epoch_end=false", "trainer.eval_steps=null", "trainer.save_steps=null",
           "trainer.final_model=last", "trainer.progress_bar=false", f"run_dir={run_dir}"]
    if spec.get("seq2seq"):
        out.append("dataset.language=en")  # the demo corpus; Whisper's prompt names it
    if spec["model"] != "tiny":
        out.append("model.name_or_path=null")  # its architecture, random init: the same FLOPs as the checkpoint
    # stated either way: a model option may turn it on (whisper_small), and the Trainer follows the flag only
    out.append(f"model.gradient_checkpointing={str(bool(spec['gradient_checkpointing'])).lower()}")
    if spec["max_steps"]:
        out.append(f"trainer.max_steps={spec['max_steps']}")
    return out


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers) / 1024


def tail_loss(curve: List[tuple]) -> Optional[float]:
    """Mean logged loss over the last quarter of the audio trained on; curve: (cumulative audio s, loss)."""
    if not curve:
        return None
    total = curve[-1][0]
    last = [loss for audio, loss in curve if audio >= 0.75 * total] or [curve[-1][1]]
    return sum(last) / len(last)


def flops_per_audio_second(model, batch: dict, audio_s: float) -> float:
    """Model FLOPs of one training step (forward and backward) on `batch`, per second of its real audio."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / audio_s


def device_figures(spec: dict, model_builder, audio_s_per_s: float) -> dict:
    """On GPUs: peak memory, achieved model TFLOP/s and MFU (counted on one batch of 8 clips of the mean length;
    a fixed-window model (Whisper) is fed them padded to its window, as in training)."""
    import torch

    if not torch.cuda.is_available() or spec["device"] == "cpu":
        return {}
    out = {"peak_device_mb": torch.cuda.max_memory_allocated() / 2**20}
    model = model_builder().cuda().train()
    n = int(spec["mean_clip_s"] * 16000)
    labels = torch.randint(1, 20, (8, 20), device="cuda")
    if getattr(model.config, "is_encoder_decoder", False):
        frames = model.config.max_source_positions * 2
        batch = {"input_features": torch.randn(8, model.config.num_mel_bins, frames, device="cuda"), "labels": labels}
    else:
        batch = {"input_values": torch.randn(8, n, device="cuda"),
                 "attention_mask": torch.ones(8, n, device="cuda", dtype=torch.long), "labels": labels}
    tflops = flops_per_audio_second(model, batch, 8 * spec["mean_clip_s"]) * audio_s_per_s / 1e12
    out["tflops"] = tflops
    name = torch.cuda.get_device_name(0)
    peak = spec["peak_tflops"] or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak:
        out["mfu"] = tflops / peak
    return out


def device_name(torch) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU x{os.cpu_count()}"


def child(system: str, spec: dict) -> dict:
    work = Path(spec["work"])
    if system == "trainer":
        result = run_seq2seq_trainer(spec, work) if spec.get("seq2seq") else run_trainer(spec, work)
    else:
        result = run_speechkit(spec, work, system)
    import torch

    result.update(device=device_name(torch), peak_rss_mb=peak_rss_mb(),
                  first_step_s=result.pop("first_step_at") - spec["launched"],
                  end_to_end_s=result.pop("last_step_at") - spec["launched"],
                  final_loss=tail_loss(result.pop("curve")))
    (work / "result.json").write_text(json.dumps(result))
    print(json.dumps(result, indent=1))
    return result


def run_speechkit(spec: dict, work: Path, system: str) -> dict:
    """`python train.py` in this process: speechkit's own set-up path, its own metrics.jsonl read back
    (speechkit_plain: with trainer.fast_paths=false)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    from speechkit.commands import train
    from speechkit.models import build_model

    from omegaconf import OmegaConf

    raw = compose(speechkit_overrides(spec, str(work / "run")) + VARIANTS.get(system, []))
    cfg = OmegaConf.to_object(raw)
    if system == "steps_alone":
        from speechkit.training import trainer

        trainer.loop = steps_alone_loop(work / "steps_alone.jsonl")  # train.run's own set-up and shipping around it
    train.run(raw)
    if system == "steps_alone":
        logged = [json.loads(line) for line in (work / "steps_alone.jsonl").read_text().splitlines()]
    else:
        records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in records if r["kind"] == "train"]
    audio = sum(r["audio_s"] for r in logged)
    seconds = sum(r["train_s"] for r in logged)
    curve, seen = [], 0.0
    for r in logged:
        seen += r["audio_s"]
        curve.append((seen, r["loss"]))
    padded = sum(r["audio_s"] / (1 - r["padding"]) for r in logged)
    result = {"system": system, "clips": _clips(spec), "steps": logged[-1]["step"], "audio_s": audio,
              "train_s": seconds, "audio_s_per_s": audio / seconds, "padding": 1 - audio / padded,
              "data_wait": sum(r["data_wait"] * r["train_s"] for r in logged) / seconds, "curve": curve,
              "first_step_at": logged[0]["time"], "last_step_at": logged[-1]["time"]}
    if spec.get("seq2seq"):
        from transformers import AutoModelForSpeechSeq2Seq, WhisperProcessor

        shipped = work / "run" / "model"
        result["heldout_loss"] = heldout_loss(AutoModelForSpeechSeq2Seq.from_pretrained(shipped),
                                              WhisperProcessor.from_pretrained(shipped), spec["data"])
    head, extra = ("seq2seq", {"decoder_start_token_id": 1}) if spec.get("seq2seq") else ("ctc", {})

    def model_builder():  # the model train.py builds: SpecAugment's masks and the adapter as configured
        from speechkit.models import adapters, family_of

        adapter = adapters.make(cfg.adapter, cfg.dataset.spoken_language(), cfg.model.name_or_path)
        model = build_model(cfg.model, head, cfg.augment.specaugment, adapter, vocab_size=64, pad_token_id=0,
                            **extra)
        adapter.attach(model, family_of(model.config.model_type))
        return model
    result.update(parameter_counts(cfg, model_builder))
    result.update(device_figures(spec, model_builder, result["audio_s_per_s"]))
    return result


def steps_alone_loop(path: Path):
    """A stand-in for speechkit's training loop (speechkit/training/trainer.py: loop) that first takes all its
    batches from the run's loader, then times only the optimizer steps on them: the forward pass and loss, backward,
    gradient clipping, the optimizer and the schedule, as the loop calls them, without its logging, checks or waiting
    for data. Writes one record a step to `path`, in metrics.jsonl's train keys."""

    def loop(cfg, accelerator, task, run) -> None:
        import itertools

        import torch

        batches = [b for b in itertools.islice(run.batches, run.state.total_steps) if b is not None]
        model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
        model.train()
        losses, times = [], []
        started = time.perf_counter()
        for batch in batches:
            loss = task.forward(model, batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.detach())
            times.append(time.perf_counter())
        run.state.global_step = run.state.total_steps
        rate = run.sampling_rate
        with open(path, "w") as f:
            for step, (batch, loss, end, start) in enumerate(zip(batches, losses, times, [started, *times]), 1):
                f.write(json.dumps({"step": step, "loss": float(loss), "audio_s": batch["audio_samples"] / rate,
                                    "train_s": end - start, "padding": 1 - batch["audio_samples"] /
                                    batch["padded_samples"], "data_wait": 0.0,
                                    "time": time.time() - (times[-1] - end)}) + "\n")

    return loop


def parameter_counts(cfg, model_builder) -> dict:
    """The parameters the system trains and has, on the model as train.py builds it (its adapter attached)."""
    from speechkit.models import adapters, family_of

    model = model_builder()
    adapters.make(cfg.adapter, "en", cfg.model.name_or_path).attach(model, family_of(model.config.model_type))
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters())}


def _clips(spec: dict) -> int:
    with open(Path(spec["data"]) / "train" / "metadata.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def run_trainer(spec: dict, work: Path) -> dict:
    """transformers' examples/pytorch/speech-recognition/run_speech_recognition_ctc.py, reduced to what it does for
    this data: vocab from the training text, audio decoded and resampled by `datasets`, normalized by the feature
    extractor in `prepare_dataset`, lengths for group_by_length, DataCollatorCTCWithPadding, Trainer."""
    import datasets
    import torch
    from transformers import (Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2CTCTokenizer,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor, set_seed)

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose(speechkit_overrides(spec, str(work / "unused"))))
    m = cfg.model
    raw = datasets.load_dataset("audiofolder", data_dir=spec["data"], split="train")
    chars_to_ignore = re.compile(r"[\,\?\.\!\-\;\:\"“%‘”�—’…–]")
    raw = raw.map(lambda b: {"target_text": chars_to_ignore.sub("", b["transcription"]).lower() + " "})
    chars = sorted(set("".join(raw["target_text"])))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["|"] = vocab.pop(" ")
    vocab["[UNK]"], vocab["[PAD]"] = len(vocab), len(vocab) + 1
    (work / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(work / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    layer_norm = m.architecture.get("feat_extract_norm", "group") == "layer"
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=layer_norm)
    processor = Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    raw = raw.cast_column("audio", datasets.Audio(sampling_rate=16000))

    def prepare_dataset(batch):
        sample = batch["audio"]
        inputs = feature_extractor(sample["array"], sampling_rate=sample["sampling_rate"])
        batch["input_values"] = inputs.input_values[0]
        batch["input_length"] = len(batch["input_values"])
        batch["labels"] = tokenizer(batch["target_text"]).input_ids
        return batch

    train = raw.map(prepare_dataset, remove_columns=raw.column_names, desc="preprocess datasets")
    max_len = cfg.dataset.filters.max_duration_s * 16000
    train = train.filter(lambda n: 0 < n < max_len, input_columns=["input_length"])

    stats = new_stats()

    class DataCollatorCTCWithPadding:
        def __call__(self, features):
            stats["audio"] += sum(len(f["input_values"]) for f in features)  # measuring only: real samples
            input_features = [{"input_values": f["input_values"]} for f in features]
            label_features = [{"input_ids": f["labels"]} for f in features]
            batch = processor.pad(input_features, padding=True, return_tensors="pt")
            labels_batch = processor.pad(labels=label_features, padding=True, return_tensors="pt")
            batch["labels"] = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
            if "attention_mask" in batch:
                batch["attention_mask"] = batch["attention_mask"].to(torch.long)
            stats["padded"] += batch["input_values"].numel()  # measuring only
            return batch

    set_seed(spec["seed"])
    config = Wav2Vec2Config(**m.architecture, attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout,
                            activation_dropout=m.activation_dropout, feat_proj_dropout=m.feat_proj_dropout,
                            final_dropout=m.final_dropout, mask_time_prob=m.mask_time_prob, layerdrop=m.layerdrop,
                            ctc_loss_reduction=cfg.task.ctc_loss_reduction,
                            ctc_zero_infinity=cfg.task.ctc_zero_infinity,
                            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = Wav2Vec2ForCTC(config)
    if m.freeze_feature_encoder:
        model.freeze_feature_encoder()
    args = {"train_sampling_strategy": "group_by_length", "length_column_name": "input_length"}
    result = train_measured(Trainer, TrainingArguments, args, model, DataCollatorCTCWithPadding(), train, processor,
                            spec, cfg, work, stats)
    result.update(device_figures(spec, lambda: Wav2Vec2ForCTC(config), result["audio_s_per_s"]))
    return result


def new_stats() -> dict:
    """What a Trainer run's collator and callbacks measure: real and fed audio samples, time waiting for batches,
    the loss curve by audio seen."""
    return {"audio": 0.0, "padded": 0.0, "waited": 0.0, "curve": []}


def train_measured(trainer_class, arguments_class, arguments: dict, model, collator, train, processing_class,
                   spec: dict, cfg, work: Path, stats: dict) -> dict:
    """`trainer_class` trained on `train` with the benchmark's settings (and the example script's own `arguments`),
    timed from the first batch it asks for to its last optimizer step."""
    import torch
    from transformers import TrainerCallback

    class MeasuredTrainer(trainer_class):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            t = time.perf_counter()
            batches, n = super().get_batch_samples(epoch_iterator, num_batches, device)
            stats["waited"] += time.perf_counter() - t
            stats.setdefault("started", t)
            return batches, n

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            stats.setdefault("first_step_at", now)
            stats["last_step_at"], stats["ended"], stats["steps"] = now, time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                stats["curve"].append((stats["audio"] / 16000, logs["loss"]))

    args = arguments_class(
        output_dir=str(work / "trainer"), per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=spec["epochs"], max_steps=spec["max_steps"] or -1, learning_rate=spec["learning_rate"],
        warmup_steps=spec["warmup_steps"], weight_decay=spec["weight_decay"], adam_beta1=cfg.trainer.adam_beta1,
        adam_beta2=cfg.trainer.adam_beta2, adam_epsilon=cfg.trainer.adam_epsilon,
        max_grad_norm=cfg.trainer.max_grad_norm, gradient_checkpointing=spec["gradient_checkpointing"],
        bf16=spec["precision"] == "bf16", fp16=spec["precision"] == "fp16",
        use_cpu=spec["device"] == "cpu" or not torch.cuda.is_available(),
        logging_steps=spec["logging_steps"], logging_first_step=True, save_strategy="no", eval_strategy="no",
        report_to="none", seed=spec["seed"], disable_tqdm=True, **arguments)
    trainer = MeasuredTrainer(model=model, data_collator=collator, args=args, train_dataset=train,
                              processing_class=processing_class, callbacks=[Clock()])
    trainer.train()
    seconds = stats["ended"] - stats["started"]
    return {"system": "trainer", "clips": len(train), "steps": stats["steps"], "audio_s": stats["audio"] / 16000,
            "train_s": seconds, "audio_s_per_s": stats["audio"] / 16000 / seconds,
            "padding": 1 - stats["audio"] / stats["padded"], "data_wait": stats["waited"] / seconds,
            "curve": stats["curve"], "first_step_at": stats["first_step_at"], "last_step_at": stats["last_step_at"]}


def run_seq2seq_trainer(spec: dict, work: Path) -> dict:
    """transformers' examples/pytorch/speech-recognition/run_speech_recognition_seq2seq.py, reduced to what it does
    for this data: audio decoded and resampled by `datasets`, log-mel features computed up front in
    `prepare_dataset` (`datasets.map`), the transcripts tokenized with the language and task prefix, clips outside
    the duration range filtered, DataCollatorSpeechSeq2SeqWithPadding, Seq2SeqTrainer (no group_by_length: the
    script's README runs without it). A model of random init needs a tokenizer, which the script would load with
    the checkpoint: it gets the one speechkit builds from the same transcripts (same vocabulary, same prompt)."""
    import datasets
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, set_seed)

    from omegaconf import OmegaConf

    from speechkit.models import family_of
    from speechkit.models.whisper import build_tokenizer

    cfg = OmegaConf.to_object(compose(speechkit_overrides(spec, str(work / "unused"))))
    m = cfg.model
    raw = datasets.load_dataset("audiofolder", data_dir=spec["data"], split="train")
    config = WhisperConfig(**m.architecture)
    window_s = family_of("whisper").window_s(config)
    tokenizer = build_tokenizer(raw["transcription"], window_s)
    tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=int(window_s))
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    raw = raw.cast_column("audio", datasets.Audio(sampling_rate=feature_extractor.sampling_rate))

    def prepare_dataset(batch):
        sample = batch["audio"]
        inputs = feature_extractor(sample["array"], sampling_rate=sample["sampling_rate"])
        batch["input_features"] = inputs.input_features[0]
        batch["input_length"] = len(sample["array"])
        batch["labels"] = tokenizer(batch["transcription"]).input_ids
        return batch

    train = raw.map(prepare_dataset, remove_columns=raw.column_names, desc="preprocess train dataset")
    max_input_length = window_s * feature_extractor.sampling_rate
    train = train.filter(lambda n: 0 < n < max_input_length, input_columns=["input_length"])
    stats = new_stats()
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    set_seed(spec["seed"])
    config.update({"vocab_size": len(tokenizer), "pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
                   "decoder_start_token_id": tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
                   "suppress_tokens": None, "begin_suppress_tokens": None})
    for knob in ("attention_dropout", "activation_dropout", "mask_time_prob"):
        if getattr(m, knob, None) is not None:
            config.update({knob: getattr(m, knob)})
    model = WhisperForConditionalGeneration(config)
    if m.freeze_encoder:
        model.freeze_encoder()

    class DataCollatorSpeechSeq2SeqWithPadding:
        def __init__(self, decoder_start_token_id):
            self.decoder_start_token_id = decoder_start_token_id

        def __call__(self, features):
            stats["audio"] += sum(min(f["input_length"], max_input_length) for f in features)  # measuring only
            input_features = [{"input_features": f["input_features"]} for f in features]
            label_features = [{"input_ids": f["labels"]} for f in features]
            batch = processor.feature_extractor.pad(input_features, return_tensors="pt")
            labels_batch = processor.tokenizer.pad(label_features, return_tensors="pt")
            labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
            if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
                labels = labels[:, 1:]
            batch["labels"] = labels
            stats["padded"] += len(features) * max_input_length  # measuring only: each clip is fed its window
            return batch

    collator = DataCollatorSpeechSeq2SeqWithPadding(model.config.decoder_start_token_id)
    # remove_unused_columns=False: the collator also reads input_length, for measuring only (one integer a row)
    result = train_measured(Seq2SeqTrainer, Seq2SeqTrainingArguments, {"remove_unused_columns": False}, model,
                            collator, train, feature_extractor, spec, cfg, work, stats)
    result["heldout_loss"] = heldout_loss(model, processor, spec["data"])
    result.update(device_figures(spec, lambda: WhisperForConditionalGeneration(config), result["audio_s_per_s"]))
    return result


def heldout_loss(model, processor, data: str, batch_size: int = 16) -> float:
    """A trained Whisper's teacher-forced cross-entropy per target token on every clip of the test split (the
    transcript and the end of text after the language and task prompt), one definition for every system: the
    training loss of the last steps depends on which clips those steps drew (speechkit groups them by duration),
    this does not."""
    import soundfile as sf
    import torch

    fe, tokenizer = processor.feature_extractor, processor.tokenizer
    tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    start = model.config.decoder_start_token_id
    with open(Path(data) / "test" / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    total = tokens = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            audio = [sf.read(str(Path(data) / "test" / r["file_name"]), dtype="float32")[0] for r in chunk]
            features = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features
            ids = [tokenizer(r["transcription"]).input_ids for r in chunk]
            ids = [x[1:] if x[0] == start else x for x in ids]  # the model puts its decoder start there itself
            labels = torch.full((len(ids), max(map(len, ids))), -100)
            for row, x in zip(labels, ids):
                row[:len(x)] = torch.tensor(x)
            logits = model(input_features=features.to(model.device), labels=labels.to(model.device)).logits
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float().cpu(), labels.flatten(),
                                                       ignore_index=-100, reduction="sum").item()
            tokens += int((labels != -100).sum())
    return total / tokens


if __name__ == "__main__":
    main()
