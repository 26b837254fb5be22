"""Peak memory of training as the corpus grows: the offline demo corpus at 1x and 10x its size, streamed
(`dataset.streaming=true`) and not (the checking pass decodes every clip into the datasets cache first).

The 1x corpus is the demo's own (`experiment=demo`: 1200 clips, espeak-ng). The 10x one lists each of its training
clips ten times under ten names (hard links: ten times the rows and the decoding, not ten times the disk); its test
split is the demo's. Each run is `python train.py` with the tiny model for `--steps` steps, in its own process with
an empty datasets cache; its peak RSS (its process and any loader worker), wall time and the size of the datasets
cache it filled are measured from outside.

Prints and writes (<out>/streaming-memory.json, .md) one row per (scale, streamed) run and the 10x / 1x ratio of
peak RSS for each mode.

    python benchmarks/streaming_memory.py                     # 1x and 10x, 40 steps each
    python benchmarks/streaming_memory.py --scales 1 3 --steps 20 --num-train 100
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Run by a fresh interpreter around train.py: the child's peak RSS (its own and its waited-for descendants').
PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="corpus sizes, in copies of the demo's")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--num-train", type=int, default=1200, help="clips of the 1x corpus (the demo's: 1200)")
    p.add_argument("--num-test", type=int, default=80)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default=None, help="where corpora and runs go (default: a folder under --out)")
    return p.parse_args(argv)


def demo_corpus(args) -> Path:
    """The demo corpus (synthesized on first use, then cached), as experiment=demo has it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from speechkit.cli import register_configs
    from speechkit.data.demo_corpus import ensure_corpus

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", ["experiment=demo", f"dataset.demo.num_train={args.num_train}",
                                f"dataset.demo.num_test={args.num_test}", "run_dir=/unused"])
    return Path(ensure_corpus(OmegaConf.to_object(cfg).dataset))


def scaled(corpus: Path, scale: int, root: Path) -> Path:
    """An audiofolder whose training split lists every demo training clip `scale` times (hard links)."""
    folder = root / f"x{scale}"
    if (folder / "COMPLETE").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "train").mkdir(parents=True)
    shutil.copytree(corpus / "test", folder / "test")
    with open(corpus / "train" / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "train" / "metadata.csv", "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        for copy in range(scale):
            for row in rows:
                name = f"c{copy}_{row['file_name']}"
                os.link(corpus / "train" / row["file_name"], folder / "train" / name)
                out.writerow({**row, "file_name": name})
    (folder / "COMPLETE").touch()
    return folder


def command(args, folder: Path, streamed: bool, run_dir: Path):
    return [sys.executable, str(REPO / "train.py"), "dataset=audiofolder", f"dataset.path={folder}",
            "model=tiny", "hw=cpu", "trainer.batch_duration_s=16",
            "trainer.learning_rate=2e-3", "trainer.warmup_steps=10", f"trainer.max_steps={args.steps}",
            "trainer.logging_steps=10", "trainer.eval_steps=null", "trainer.eval_at_epoch_end=false",
            "trainer.save_steps=null", "trainer.progress_bar=false", f"dataset.streaming={str(streamed).lower()}",
            f"hydra.run.dir={run_dir}"]


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def measure(args, folder: Path, scale: int, streamed: bool, work: Path) -> dict:
    name = f"x{scale}-{'streamed' if streamed else 'cached'}"
    run_dir, cache = work / "runs" / name, work / "runs" / f"{name}-hf"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *command(args, folder, streamed, run_dir)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kb, code = (int(x) for x in done.stdout.strip().splitlines()[-1].split())
    if code != 0:
        raise SystemExit(f"{name} failed ({code}):\n{done.stderr[-3000:]}")
    clips = sum(1 for _ in open(folder / "train" / "metadata.csv")) - 1
    return {"scale": scale, "streamed": streamed, "train_clips": clips, "steps": args.steps,
            "peak_rss_mb": round(peak_kb / 1024), "wall_s": round(wall, 1), "datasets_cache_mb": round(du_mb(cache))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "streaming-work"
    work.mkdir(parents=True, exist_ok=True)
    corpus = demo_corpus(args)
    rows = []
    for scale in args.scales:
        folder = scaled(corpus, scale, work)
        for streamed in (False, True):
            rows.append(measure(args, folder, scale, streamed, work))
            print(json.dumps(rows[-1]), flush=True)
    low, high = min(args.scales), max(args.scales)
    ratios = {}
    for streamed in (False, True):
        pick = {r["scale"]: r["peak_rss_mb"] for r in rows if r["streamed"] == streamed}
        ratios["streamed" if streamed else "cached"] = round(pick[high] / pick[low], 2)
    result = {"runs": rows, f"peak_rss_ratio_x{high}_over_x{low}": ratios}
    table = ["| corpus | clips | mode | peak RSS (MB) | wall (s) | datasets cache (MB) |", "|---|---|---|---|---|---|"]
    table += [f"| {r['scale']}x | {r['train_clips']} | {'streamed' if r['streamed'] else 'decoded & cached'} | "
              f"{r['peak_rss_mb']} | {r['wall_s']} | {r['datasets_cache_mb']} |" for r in rows]
    table.append(f"\nPeak RSS {high}x / {low}x: decoded & cached {ratios['cached']}, streamed {ratios['streamed']} "
                 f"({args.steps} steps of the tiny model each).")
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming-memory.json").write_text(json.dumps(result, indent=1))
    (out / "streaming-memory.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return result


if __name__ == "__main__":
    main()
