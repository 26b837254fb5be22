"""benchmarks/inference.py runs for real on a tiny budget: every runtime measured and reported (no timing is
asserted)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


def test_inference_benchmark_measures_each_runtime_side_by_side(asr_demo_run, tmp_path):
    """benchmarks/inference.py on the session's tiny demo run (copied: the exports go into its model/): every
    runtime transcribed, served and sized, the parity figures kept, the targets judged; tiny settings."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(asr_demo_run[0], run_dir)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/inference.py", "--only", "demo", "--demo-run", str(run_dir),
                           "--speech-s", "12", "--clip-s", "2", "--requests", "2", "--batch", "1", "--repeats", "1",
                           "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "inference.json").read_text())
    demo = summary["results"]["demo"]
    assert set(demo["runtimes"]) == {"torch", "onnx", "onnx_int8"}
    for runtime, r in demo["runtimes"].items():
        assert r["transcribe"]["real_time_factor"] > 0 and r["serve"]["errors"] == 0, runtime
        assert r["size_mb"] > 0 and r["transcribe"]["peak_rss_mb"] > 100
    assert demo["export"]["none"]["passed"] and demo["export"]["int8"]["passed"]
    assert demo["vad"]["speech_s"] < demo["recording"]["seconds"]  # the pauses are not transcribed
    assert demo["vad"]["runs"] == [demo["vad"]["real_time_factor"]]  # one run: its own median
    assert set(demo["model_alone"]["runs_s"]) == {"torch", "torch conv feature encoder", "onnx", "onnx_int8"}
    assert "demo: VAD >= 1.5x faster" in summary["targets"] and "| demo | onnx_int8 |" in done.stdout
    assert (out / "inference.md").read_text() in done.stdout
