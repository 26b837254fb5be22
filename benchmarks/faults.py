"""Fault injection: training killed with SIGKILL at random moments, some of them inside checkpoint writes, resumed
with `trainer.resume=auto` each time until the run ends; its final weights compared with those of the same run left
alone.

A run is `python train.py experiment=demo` on a small demo corpus with a checkpoint every step. The campaign:

1. the reference: the run, uninterrupted;
2. the faulted run: started, killed after a random delay (seeded), or, every other kill, the moment a checkpoint's
   hidden `.tmp-step-N` folder appears (the write under way); restarted with `trainer.resume=auto`; again, `--kills`
   times; then left to finish;
3. the shipped weights of both, tensor by tensor, bit for bit.

Prints and writes (<out>/faults.json, .md) the campaign's figures: runs, kills, kills inside a checkpoint write,
the steps each restart resumed from, and whether the faulted run continued exactly.

    python benchmarks/faults.py                       # 6 kills, 40 steps
    python benchmarks/faults.py --kills 20 --steps 30 --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of the run (a checkpoint after each)")
    p.add_argument("--seed", type=int, default=0, help="the kill schedule's seed")
    p.add_argument("--num-train", type=int, default=96, help="demo corpus clips (batches of 4)")
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default=None, help="where the runs go (default: a folder under --out)")
    return p.parse_args(argv)


def command(args, run_dir: Path, resume: bool) -> List[str]:
    return [sys.executable, str(REPO / "train.py"), "experiment=demo", "hw=cpu",
            f"dataset.demo.num_train={args.num_train}", f"dataset.demo.num_test={args.num_test}",
            "trainer.batch_size=4", "trainer.batch_duration_s=null", "trainer.eval_batch_size=4",
            "trainer.warmup_steps=2", "trainer.learning_rate=1e-3", "trainer.logging_steps=1",
            f"trainer.max_steps={args.steps}", "trainer.save_steps=1", "trainer.save_total_limit=2",
            "trainer.eval_at_epoch_end=false", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}",
            *(["trainer.resume=auto"] if resume else [])]


def start(cmd: List[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "a")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: nothing gets to clean up
    proc.wait()


def newest_step(run_dir: Path) -> int:
    steps = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name)) and (p / "trainer_state.json").exists()]
    return max(steps, default=0)


def campaign(args) -> dict:
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "faults-work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    rng = random.Random(args.seed)

    t0 = time.time()
    reference = work / "reference"
    done = subprocess.run(command(args, reference, False), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    reference_s = time.time() - t0
    steps = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    startup = steps[0]["time"] - t0  # launch to the first step
    step_s = (steps[-1]["time"] - steps[0]["time"]) / max(len(steps) - 1, 1)

    faulted, log_path = work / "faulted", work / "faulted.log"
    kills, in_write, resumed_from, runs = [], 0, [], 0
    while True:
        runs += 1
        resumed_from.append(newest_step(faulted))
        proc = start(command(args, faulted, resume=runs > 1), log_path)
        if len(kills) >= args.kills:
            if proc.wait() != 0:
                raise SystemExit(f"the last run failed: see {log_path}")
            break
        inside = len(kills) % 2 == 1  # every other kill waits for a checkpoint write under way
        # a random moment of this run's share of what is left to train, so that every kill finds training to stop
        share = (args.steps - resumed_from[-1]) * step_s / (args.kills - len(kills))
        deadline = time.time() + (600 if inside else startup + rng.uniform(0.0, share))
        while proc.poll() is None and time.time() < deadline:
            if inside and any((faulted / "checkpoints").glob(".tmp-step-*")):
                break
            time.sleep(0.005)
        if proc.poll() is not None:  # it finished before the kill: nothing left to interrupt
            if proc.returncode != 0:
                raise SystemExit(f"a run failed by itself: see {log_path}")
            break
        during = any((faulted / "checkpoints").glob(".tmp-step-*"))
        kill(proc)
        in_write += during
        kills.append({"after_s": round(time.time() - t0, 2), "inside_checkpoint_write": during,
                      "newest_complete_step": newest_step(faulted)})

    from safetensors.torch import load_file

    a, b = (load_file(d / "model" / "model.safetensors") for d in (reference, faulted))
    exact = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    same_state = json.loads((reference / "checkpoints" / f"step-{args.steps}" / "trainer_state.json").read_text()) == \
        json.loads((faulted / "checkpoints" / f"step-{args.steps}" / "trainer_state.json").read_text())
    return {"command": " ".join(["python benchmarks/faults.py", *sys.argv[1:]]), "steps": args.steps,
            "seed": args.seed, "runs": runs, "kills": len(kills), "kills_inside_checkpoint_write": in_write,
            "resumed_from_steps": resumed_from[1:], "exact_continuation": bool(exact and same_state),
            "reference_run_s": round(reference_s, 1), "campaign_s": round(time.time() - t0, 1), "kill_log": kills}


def table(r: dict) -> str:
    rows = [("runs (started processes)", r["runs"]), ("kills (SIGKILL)", r["kills"]),
            ("kills inside a checkpoint write", r["kills_inside_checkpoint_write"]),
            ("steps the restarts resumed from", ", ".join(map(str, r["resumed_from_steps"])) or "-"),
            ("final weights bit-identical to the uninterrupted run", "yes" if r["exact_continuation"] else "NO"),
            ("campaign time (s)", r["campaign_s"])]
    return f"`{r['command']}`: {r['steps']} steps, a checkpoint after each\n\n| | |\n|---|---|\n" + \
        "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    result = campaign(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (out / "faults.md").write_text(text)
    print(text, flush=True)
    return 0 if result["exact_continuation"] else 1


if __name__ == "__main__":
    sys.exit(main())
