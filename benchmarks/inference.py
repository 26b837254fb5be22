"""Inference per runtime: PyTorch float32 against its ONNX export (float32 and int8), and VAD-segmented
transcription, measured side by side in one run.

    python benchmarks/inference.py                      # the demo model, wav2vec2-base, the demo Whisper
    python benchmarks/inference.py --only demo --demo-run <a run dir of `train.py experiment=demo`>
    python benchmarks/inference.py --only demo_whisper --whisper-run <a run dir of `experiment=demo_whisper`>

For each model (the demo model: `experiment=demo`, trained here first when --demo-run is not given, 3 minutes on 2
cores; the wav2vec2-base architecture: random weights, 94M parameters, one training step so that it is a real
speechkit run; the demo Whisper: `experiment=demo_whisper`, trained first when --whisper-run is not given, 4 minutes
on 2 cores): export.py (float32, then quantize=int8) with the parity gate's figures; then, per runtime,
`transcribe.py` on a long recording made of the demo corpus' held-out clips, its speech in stretches of about 20 s
with 10 s pauses (one third silence), as real-time factor, peak memory (the process' max RSS) and WER against the
clips' transcripts; `transcribe.py vad=true` on the same recording (PyTorch float32), every transcribe.py
command in a fresh process, all of them in turn `--repeats` times (the median kept); `serve.py` under
benchmarks/serve_load.py (p50/p99 latency, requests/s); the size of each runtime's model files (a Whisper export's
three graphs together); and for a CTC model the graph alone (PyTorch, its conv feature encoder alone, ONNX fp32 and
int8) on one batch, run in turn, warm-up runs shown. Writes
<out>/inference.json and inference.md and prints the table.

Targets on the CPU (docs/serving.md): wav2vec2-base ONNX int8 >= 2x the real-time factor of
torch float32 and its file <= 35 % of the float32 weights; the demo model's int8 within 0.02 WER of float32; VAD >=
1.5x faster, WER no worse.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RUNTIMES = ("torch", "onnx", "onnx_int8")
FILES = {"torch": "model.safetensors", "onnx": "onnx/model.onnx", "onnx_int8": "onnx/model.int8.onnx"}
MODELS = {  # what each is trained with when no run dir is given
    "demo": ["experiment=demo"],
    "wav2vec2_base": ["experiment=demo", "model=wav2vec2_base", "model.name_or_path=null", "dataset.demo.num_train=24",
                      "dataset.demo.num_test=6", "trainer.max_steps=1", "trainer.batch_size=2",
                      "trainer.eval_batch_size=2"],
    "demo_whisper": ["experiment=demo_whisper"]}


def run(args, log: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}): see {log}\n{done.stderr[-2000:]}")
    return done


def measured(args, log: Path) -> tuple:
    """Run a command; (its seconds, its peak RSS in MB) from its own rusage (which counts this process' memory at
    the fork: this one is kept small, see model_alone)."""
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({proc.returncode}): see {log}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024


def trained_run(name: str, run_dir: Path, overrides, out: Path) -> Path:
    if (run_dir / "model" / "config.json").is_file():
        return run_dir
    print(f"[{name}] training into {run_dir} ...", flush=True)
    run(["train.py", *overrides, "trainer.progress_bar=false", "hw=cpu", f"hydra.run.dir={run_dir}"],
        out / f"{name}-train.log")
    return run_dir


def recording(run_dir: Path, speech_s: float, out: Path) -> tuple:
    """(path, reference text): the run's held-out demo clips, in stretches of about 20 s of speech (0.3 s between
    clips) each followed by 10 s of silence, until `speech_s` of speech (clips reused if there are too few)."""
    import soundfile as sf
    from omegaconf import OmegaConf

    from speechkit.config import DatasetConfig
    from speechkit.data.audio import decode
    from speechkit.data.demo_corpus import corpus_dir

    saved = OmegaConf.load(run_dir / "config.yaml").dataset
    dataset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), saved))
    folder = Path(corpus_dir(dataset)) / "test"
    with open(folder / "metadata.csv", newline="") as f:
        clips = [(folder / r["file_name"], r["transcription"]) for r in csv.DictReader(f)]
    rate, parts, texts, speech, stretch, i = 16000, [], [], 0.0, 0.0, 0
    while speech < speech_s:
        path, text = clips[i % len(clips)]
        audio = decode(str(path), rate)
        parts += [audio, np.zeros(int(0.3 * rate), np.float32)]
        texts.append(text)
        speech += audio.size / rate
        stretch += audio.size / rate + 0.3
        i += 1
        if stretch >= 20 or speech >= speech_s:
            parts.append(np.zeros(10 * rate, np.float32))
            stretch = 0.0
    audio = np.concatenate(parts)
    path = out / f"{run_dir.name}-long.wav"
    sf.write(path, audio, rate)
    return path, " ".join(texts), speech, audio.size / rate


def transcribed(model_dir: Path, audio: Path, runtime: str, vad: bool, out: Path, reference: str) -> dict:
    import jiwer

    target = out / f"transcribed-{model_dir.parent.name}-{runtime}-{'vad' if vad else 'all'}"
    seconds, peak = measured(["transcribe.py", f"model_dir={model_dir}", f"audio={audio}", f"output_dir={target}",
                              "hw=cpu", "progress_bar=false", f"inference.runtime={runtime}",
                              f"vad={str(vad).lower()}"], target.with_suffix(".log"))
    result = json.loads((target / f"{audio.stem}.json").read_text())
    return {"real_time_factor": result["real_time_factor"], "wall_s": round(seconds, 2), "peak_rss_mb": round(peak),
            "wer": round(jiwer.wer(reference, result["text"] or "-"), 4),
            "speech_s": result.get("speech_s")}


def transcribed_in_turn(model_dir: Path, audio: Path, out: Path, reference: str, repeats: int) -> dict:
    """transcribe.py per runtime, and with vad=true (PyTorch), each in a fresh process, all of them in turn
    `repeats` times (so that a slow spell of the machine falls on every one alike): per kind, the median real-time
    factor, every run's, and the largest peak RSS."""
    kinds = {runtime: (runtime, False) for runtime in RUNTIMES} | {"vad": ("torch", True)}
    runs = {kind: [] for kind in kinds}
    for turn in range(repeats):
        for kind, (runtime, vad) in kinds.items():
            print(f"[{model_dir.parent.name}] transcribe.py {kind} ({turn + 1}/{repeats}) ...", flush=True)
            runs[kind].append(transcribed(model_dir, audio, runtime, vad, out, reference))
    figures = {}
    for kind, done in runs.items():
        factors = [r["real_time_factor"] for r in done]
        figures[kind] = {**done[0], "real_time_factor": float(np.median(factors)), "runs": factors,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in done)}
    return figures


def served(model_dir: Path, clip: Path, runtime: str, args, out: Path) -> dict:
    import serve_load

    summary = serve_load.main(["--model-dir", str(model_dir), "--audio", str(clip), "--clients", str(args.clients),
                               "--requests", str(args.requests), "--runtime", runtime,
                               "--out", str(out / f"serve-{model_dir.parent.name}-{runtime}")])
    lat = summary["latency_s"]
    return {"p50_ms": round(lat["p50"] * 1000, 1), "p99_ms": round(lat["p99"] * 1000, 1),
            "requests_per_s": round(summary["requests_per_s"], 2), "errors": summary["errors"],
            "server_rss_mb": round(summary["server_rss_mb"]["after"])}


def model_alone(model_dir: Path, batch: int, seconds: float, runs: int = 4) -> dict:
    """The graph alone, in a process of its own: PyTorch fp32 (and its conv feature encoder alone), ONNX fp32 and
    int8 on one batch of `batch` windows of `seconds` of noise, each run `runs` times (the first ones include warming
    up): every run's seconds. Not in this process: it would keep the models' memory, and a
    command started after it would report that as its own peak (a forked child's ru_maxrss counts the parent's pages
    it held until exec: 4690 MB for every demo Whisper command run after wav2vec2-base's graph here)."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import inference; "
            "print(json.dumps(inference._model_alone(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), "
            "int(sys.argv[5]))))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks"), str(model_dir), str(batch),
                           str(seconds), str(runs)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the graph-alone timing of {model_dir} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _model_alone(model_dir: Path, batch: int, seconds: float, runs: int) -> dict:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCTC

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (batch, int(seconds * 16000))).astype(np.float32)
    model = AutoModelForCTC.from_pretrained(model_dir).eval()
    times = {}

    def timed(key, f):
        times[key] = []
        for _ in range(runs):
            began = time.perf_counter()
            f()
            times[key].append(round(time.perf_counter() - began, 3))

    with torch.no_grad():
        timed("torch", lambda: model(torch.from_numpy(x)))
        encoder = getattr(getattr(model, model.base_model_prefix), "feature_extractor", None)
        if encoder is not None:
            timed("torch conv feature encoder", lambda: encoder(torch.from_numpy(x)))
    for runtime in ("onnx", "onnx_int8"):
        session = ort.InferenceSession(str(model_dir / FILES[runtime]), providers=["CPUExecutionProvider"])
        feed = {i.name: x if i.name == "input_values" else np.ones(x.shape, np.int64) for i in session.get_inputs()}
        timed(runtime, lambda: session.run(None, feed))
    return {"batch": batch, "seconds": seconds, "runs_s": times,
            "steady_s": {k: min(v) for k, v in times.items()}}


def one_model(name: str, run_dir: Path, args, out: Path) -> dict:
    model_dir = run_dir / "model"
    figures = {"model": name, "model_dir": str(model_dir), "export": {}, "runtimes": {}}
    for quantize in ("none", "int8"):
        began = time.perf_counter()
        run(["export.py", f"model_dir={model_dir}", f"quantize={quantize}"], out / f"{name}-export-{quantize}.log")
        figures["export"][quantize] = {"seconds": round(time.perf_counter() - began, 1)}
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())
    for quantize, file in (("none", "model.onnx"), ("int8", "model.int8.onnx")):
        p = parity[file]
        figures["export"][quantize].update({k: p[k] for k in ("metric", "pytorch", "exported", "difference",
                                                              "max_logit_difference", "changed_predictions",
                                                              "utterances", "passed")})
    audio, reference, speech_s, total_s = recording(run_dir, args.speech_s, out)
    figures["recording"] = {"file": str(audio), "seconds": round(total_s, 1), "speech_s": round(speech_s, 1)}
    clip = out / f"{name}-clip.wav"
    import soundfile as sf

    samples, rate = sf.read(audio, dtype="float32")
    sf.write(clip, samples[:int(args.clip_s * rate)], rate)
    transcripts = transcribed_in_turn(model_dir, audio, out, reference, args.repeats)
    for runtime in RUNTIMES:
        print(f"[{name}] {runtime}: serve.py ...", flush=True)
        size = (model_dir / FILES[runtime]).stat().st_size / 2**20 if runtime == "torch" else \
            parity[Path(FILES[runtime]).name]["size_mb"]  # every graph of the export (a Whisper's three)
        figures["runtimes"][runtime] = {
            "size_mb": round(size, 1),
            "transcribe": transcripts[runtime], "serve": served(model_dir, clip, runtime, args, out)}
    figures["vad"] = transcripts["vad"]
    if parity["model.onnx"].get("companion_sha256") is None:  # a CTC graph; a Whisper generates (above)
        print(f"[{name}] the graph alone, one batch of {args.batch} x 20 s ...", flush=True)
        figures["model_alone"] = model_alone(model_dir, args.batch, 20.0)
    r = figures["runtimes"]
    rtf = {k: v["transcribe"]["real_time_factor"] for k, v in r.items()}
    figures["ratios"] = {
        "onnx_speedup": round(rtf["torch"] / rtf["onnx"], 2), "int8_speedup": round(rtf["torch"] / rtf["onnx_int8"], 2),
        "int8_size_fraction": round(r["onnx_int8"]["size_mb"] / r["torch"]["size_mb"], 3),
        "int8_wer_difference": round(abs(r["onnx_int8"]["transcribe"]["wer"] - r["torch"]["transcribe"]["wer"]), 4),
        "vad_speedup": round(rtf["torch"] / figures["vad"]["real_time_factor"], 2),
        "vad_wer_difference": round(figures["vad"]["wer"] - r["torch"]["transcribe"]["wer"], 4)}
    return figures


def targets(results: dict) -> dict:
    out = {}
    base, demo = results.get("wav2vec2_base"), results.get("demo")
    if base:
        speedup = base["ratios"]["int8_speedup"]
        out["wav2vec2_base: ONNX int8 >= 2x the RTF of torch fp32"] = (speedup, speedup >= 2)
        out["wav2vec2_base: int8 file <= 35% of the fp32 weights"] = (base["ratios"]["int8_size_fraction"],
                                                                      base["ratios"]["int8_size_fraction"] <= 0.35)
    if demo:
        out["demo: int8 WER within 0.02 of fp32 (parity split)"] = (
            round(demo["export"]["int8"]["difference"], 4), demo["export"]["int8"]["difference"] <= 0.02)
        out["demo: VAD WER no worse (long recording)"] = (demo["ratios"]["vad_wer_difference"],
                                                          demo["ratios"]["vad_wer_difference"] <= 0)
    for name, f in results.items():  # the recording is one third silence
        out[f"{name}: VAD >= 1.5x faster"] = (f["ratios"]["vad_speedup"], f["ratios"]["vad_speedup"] >= 1.5)
    return {k: {"value": v, "met": bool(m)} for k, (v, m) in out.items()}


def table(results: dict, met: dict, cpu: str) -> str:
    repeats = len(next(iter(results.values()))["vad"]["runs"])
    lines = [f"`python benchmarks/inference.py` on {cpu}, {os.cpu_count()} cores, one run (transcribe.py: the "
             f"median of {repeats} runs in turn):", "",
             "| model | runtime | file | RTF (transcribe.py) | speed-up | WER (long recording) | peak RSS | "
             "serve p50 | serve p99 | requests/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in results.items():
        base = f["runtimes"]["torch"]["transcribe"]["real_time_factor"]
        for runtime, r in f["runtimes"].items():
            t, s = r["transcribe"], r["serve"]
            lines.append(f"| {name} | {runtime} | {r['size_mb']} MB | {t['real_time_factor']:.4f} | "
                         f"{base / t['real_time_factor']:.2f}x | {t['wer']:.4f} | {t['peak_rss_mb']} MB | "
                         f"{s['p50_ms']:.0f} ms | {s['p99_ms']:.0f} ms | {s['requests_per_s']:.2f} |")
        v = f["vad"]
        lines.append(f"| {name} | torch, vad=true | | {v['real_time_factor']:.4f} | "
                     f"{base / v['real_time_factor']:.2f}x | {v['wer']:.4f} | {v['peak_rss_mb']} MB | | | |")
    lines += ["", "| model | export | parity split | PyTorch | exported | difference | largest logit difference | "
              "changed |", "|---|---|---|---|---|---|---|---|"]
    for name, f in results.items():
        for quantize, e in f["export"].items():
            key = next(iter(e["pytorch"]))
            lines.append(f"| {name} | {'int8' if quantize == 'int8' else 'float32'} ({e['seconds']} s) | "
                         f"{e['utterances']} clips | {e['metric']} {e['pytorch'][key]:.4f} | "
                         f"{e['exported'][key]:.4f} | "
                         f"{e['difference']:.4f} | {e['max_logit_difference']:.2e} | {e['changed_predictions']} |")
    alone = {name: f for name, f in results.items() if "model_alone" in f}  # CTC models: one pass
    if alone:
        lines += ["", "| model | the graph alone, one batch: each run in turn (s) | steady | against torch |",
                  "|---|---|---|---|"]
    for name, f in alone.items():
        a = f["model_alone"]
        for key, runs in a["runs_s"].items():
            steady, torch_s = a["steady_s"][key], a["steady_s"]["torch"]
            versus = f"{steady / torch_s:.0%} of its time" if "encoder" in key else f"{torch_s / steady:.2f}x"
            lines.append(f"| {name} | {key}, {a['batch']} x {a['seconds']:g} s: {', '.join(f'{t:.2f}' for t in runs)} "
                         f"| {steady:.2f} | {versus} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | {'yes' if v['met'] else 'NO'} |" for k, v in met.items()]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "this CPU"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=[*MODELS, "all"], default="all")
    p.add_argument("--demo-run", help="a run dir of `train.py experiment=demo` (default: trained into <out>)")
    p.add_argument("--base-run", help="a wav2vec2-base run dir (default: made into <out>, one training step)")
    p.add_argument("--whisper-run", help="a run dir of `train.py experiment=demo_whisper` (default: trained into "
                   "<out>)")
    p.add_argument("--speech-s", type=float, default=120.0, help="seconds of speech in the long recording")
    p.add_argument("--clip-s", type=float, default=8.0, help="seconds of the recording each serve.py request sends")
    p.add_argument("--batch", type=int, default=4, help="windows in the graph-alone batch (transcribe.py's batch_size)")
    p.add_argument("--repeats", type=int, default=3, help="transcribe.py runs per runtime, in turn (median kept)")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--requests", type=int, default=10, help="per client")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference"))
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    given = {"demo": args.demo_run, "wav2vec2_base": args.base_run, "demo_whisper": args.whisper_run}
    for name, overrides in MODELS.items():
        if args.only in (name, "all"):
            run_dir = Path(given[name]).resolve() if given[name] else trained_run(name, out / f"{name}_run",
                                                                                 overrides, out)
            results[name] = one_model(name, run_dir, args, out)
    met = targets(results)
    summary = {"cpu": cpu_name(), "cores": os.cpu_count(), "results": results, "targets": met}
    (out / "inference.json").write_text(json.dumps(summary, indent=1))
    text = table(results, met, summary["cpu"])
    (out / "inference.md").write_text(text)
    print(text, flush=True)
    return summary


if __name__ == "__main__":
    main()
