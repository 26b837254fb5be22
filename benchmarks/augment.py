"""Augmentation against none, the same budget side by side in one run: does it generalize, and what does it cost?

    python benchmarks/augment.py                          # experiment=demo, augment=none against augment=all
    python benchmarks/augment.py --augment '[speed,noise]' --seeds 1,2,3 augment.warmup_epochs=3 --out /tmp/b

Each system trains `train.py experiment=demo augment=<it>` (the same steps, seed and schedule; augment.* overrides go
to the augmented system only), once per seed of --seeds, then `evaluate.py` scores its shipped model on
dataset=demo_en_shifted: the demo's held-out sentences spoken by voices the training
split never uses, clean (test), with white noise at 10 dB SNR (test_noisy) and in a simulated room (test_reverb).
Reported per system: CER and WER on the clean held-out split (the run's own final eval) and on each shifted split
(computed by jiwer from predictions.csv), wall time of the training run, its mean share of time waiting for data
(metrics.jsonl's data_wait) and its audio seconds per second, each the mean over the seeds (every seed's held-out
CER printed too). Writes <out>/augment.json and prints the table.

Targets (issue: fine-tuning that generalizes): on the shifted set CER cut by >= 30 % relative, on the clean
held-out split no worse (within 0.005), wall time within 1.2x, data wait under 5 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
SHIFTED = ("test", "test_noisy", "test_reverb")


def run(args, log: Path) -> float:
    """Run a command; its wall time. Its output goes to `log`."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}): see {log}\n{done.stderr[-2000:]}")
    return time.perf_counter() - began


def scores(predictions: Path) -> dict:
    import jiwer

    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    return {"cer": jiwer.cer(refs, hyps), "wer": jiwer.wer(refs, hyps), "utterances": len(rows)}


def training_figures(run_dir: Path) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["kind"] == "train" and m["step"] > 1]  # the first window holds start-up
    seconds = sum(m["train_s"] for m in train)
    return {"data_wait": sum(m["data_wait"] * m["train_s"] for m in train) / seconds,
            "audio_s_per_s": sum(m["audio_s"] for m in train) / seconds,
            "steps": max(m["step"] for m in lines if m["kind"] == "train")}


def train_and_score(args, name: str, augment_overrides: List[str], seed: int, out: Path) -> dict:
    """One system, one seed: trained, then scored on the held-out split and each shifted split."""
    data = [o for o in args.overrides if o.startswith("dataset.")]  # the shifted set follows the training corpus
    run_dir = out / f"{name.strip('[]').replace(',', '+')}-seed{seed}"
    print(f"training experiment={args.experiment} augment={name} trainer.seed={seed} ...", flush=True)
    wall = run(["train.py", f"experiment={args.experiment}", f"augment={name}", *augment_overrides, *args.overrides,
                f"trainer.seed={seed}", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"],
               out / f"{run_dir.name}.train.log")
    figures = {"train_wall_s": wall, **training_figures(run_dir), "held_out": scores(run_dir / "predictions.csv")}
    for split in SHIFTED:
        where = run_dir / f"shifted_{split}"
        run(["evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_en_shifted", *data, f"split={split}",
             f"hydra.run.dir={where}"], out / f"{run_dir.name}.{split}.log")
        figures[f"shifted_{split}"] = scores(where / "predictions.csv")
    return figures


def mean(runs: List[dict]) -> dict:
    """The figures of several seeds' runs, averaged (nested scores too)."""
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = mean([r[key] for r in runs])
        elif isinstance(value, (int, float)):
            out[key] = sum(r[key] for r in runs) / len(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--augment", default="all", help="the conf/augment option(s) set against none")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--seeds", default="42", help="trainer.seed of each run pair (e.g. 1,2,3): figures are "
                        "the seeds' means, as one seed's clean CER moves by about 0.005 from seed to seed")
    parser.add_argument("--out", default="outputs/bench_augment")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides: augment.* ones for the augmented "
                        "system only, the others for both (and dataset.* for the shifted set too)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    augment_overrides = [o for o in args.overrides if o.startswith("augment.")]
    args.overrides = [o for o in args.overrides if not o.startswith("augment.")]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {name: [train_and_score(args, name, extra, seed, out) for seed in seeds]
                for name, extra in (("none", []), (args.augment, augment_overrides))}
    results = {name: mean(runs) for name, runs in per_seed.items()}
    base, aug = results["none"], results[args.augment]
    shifted_cer = {n: sum(r[f"shifted_{s}"]["cer"] for s in SHIFTED) / len(SHIFTED) for n, r in results.items()}
    verdict = {
        "shifted_cer_cut": 1 - shifted_cer[args.augment] / shifted_cer["none"],
        "held_out_cer_change": aug["held_out"]["cer"] - base["held_out"]["cer"],
        "wall_ratio": aug["train_wall_s"] / base["train_wall_s"],
        "data_wait": aug["data_wait"],
    }
    verdict["targets_met"] = {"shifted_cer_cut>=0.30": verdict["shifted_cer_cut"] >= 0.30,
                              "held_out_cer_change<=0.005": verdict["held_out_cer_change"] <= 0.005,
                              "wall_ratio<=1.2": verdict["wall_ratio"] <= 1.2, "data_wait<0.05": aug["data_wait"] < 0.05}
    report = {"experiment": args.experiment, "augment": args.augment, "augment_overrides": augment_overrides,
              "overrides": args.overrides, "seeds": seeds, "systems": results, "per_seed": per_seed,
              "shifted_cer_mean": shifted_cer, **verdict}
    (out / "augment.json").write_text(json.dumps(report, indent=2))
    label = {"none": "none", args.augment: " ".join([f"augment={args.augment}", *augment_overrides])}
    print(f"\nmeans over trainer.seed {', '.join(map(str, seeds))}:")
    head = f"{'system':<14}{'held-out CER':>13}{'WER':>7}" + "".join(f"{s + ' CER':>18}" for s in SHIFTED) + \
        f"{'train s':>9}{'data wait':>10}{'audio s/s':>10}"
    print(head)
    for name, r in results.items():
        print(f"{name:<14}{r['held_out']['cer']:>13.4f}{r['held_out']['wer']:>7.3f}"
              + "".join(f"{r[f'shifted_{s}']['cer']:>18.4f}" for s in SHIFTED)
              + f"{r['train_wall_s']:>9.0f}{r['data_wait']:>10.3f}{r['audio_s_per_s']:>10.1f}")
    for name, runs in per_seed.items():
        print(f"{label[name]}: held-out CER by seed " + ", ".join(f"{r['held_out']['cer']:.4f}" for r in runs))
    print(f"shifted CER cut {verdict['shifted_cer_cut']:.1%} (target >= 30 %); held-out CER change "
          f"{verdict['held_out_cer_change']:+.4f} (<= 0.005); wall time {verdict['wall_ratio']:.2f}x (<= 1.2x); "
          f"data wait {aug['data_wait']:.1%} (< 5 %)")
    print(f"written: {out / 'augment.json'}")


if __name__ == "__main__":
    main()
