"""The throughput benchmark runs for real on a tiny budget: both systems measured and reported (no timing is
asserted). Each benchmark has a file of its own, so that the two test workers (--dist loadfile) share them."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, SMALL_DEMO

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


def test_throughput_benchmark_reports_both_systems_and_lora_beside_them(tmp_path):
    out = tmp_path / "out"
    num_train, num_test = (o.split("=")[1] for o in SMALL_DEMO)  # the session's demo corpus, already synthesized
    done = subprocess.run([sys.executable, "benchmarks/throughput.py", "--device", "cpu", "--num-train", num_train,
                           "--num-test", num_test, "--max-steps", "2", "--batch-size", "4", "--logging-steps", "1",
                           "--systems", "speechkit,trainer,speechkit_lora", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "throughput-tiny-cpu.json").read_text())
    assert summary["spec"]["batch_duration_s"] > 0  # speechkit's budget: 4 clips of the mean duration
    for system in ("speechkit", "trainer"):
        r = summary["results"][system]
        assert r["system"] == system and r["steps"] == 2 and r["clips"] == int(num_train)
        assert r["audio_s"] > 0 and r["audio_s_per_s"] > 0 and r["train_s"] > 0
        assert 0 <= r["padding"] < 1 and 0 <= r["data_wait"] < 1
        assert r["peak_rss_mb"] > 100 and 0 < r["first_step_s"] <= r["end_to_end_s"]
        assert r["final_loss"] > 0
    assert set(summary["ratios"]) >= {"audio_s_per_s", "end_to_end_s", "first_step_s", "peak_rss_mb"}
    full, lora = summary["results"]["speechkit"], summary["results"]["speechkit_lora"]
    assert lora["steps"] == 2 and lora["audio_s_per_s"] > 0
    # the tiny model trains all its weights; LoRA its updates and the CTC head only (and holds the updates too)
    assert full["trainable_params"] == full["total_params"] and 0 < lora["trainable_params"] < full["total_params"]
    assert lora["total_params"] > full["total_params"]
    assert summary["ratios_lora"]["trainable_params"] == full["trainable_params"] / lora["trainable_params"]
    table = (out / "throughput-tiny-cpu.md").read_text()
    assert "| training throughput (audio s / s) |" in table and "speechkit / Trainer" in table
    assert table in done.stdout  # printed as well as written


def test_throughput_benchmark_runs_whisper_against_the_seq2seq_trainer_and_its_steps_alone(tmp_path):
    """steps_alone takes speechkit's batches and times only the steps: the same training (the same held-out loss
    after it), no data wait."""
    out = tmp_path / "out"
    num_train, num_test = (o.split("=")[1] for o in SMALL_DEMO)
    done = subprocess.run([sys.executable, "benchmarks/throughput.py", "--device", "cpu", "--model", "whisper_scratch",
                           "--num-train", num_train, "--num-test", num_test, "--max-steps", "2", "--batch-size", "4",
                           "--logging-steps", "1", "--systems", "speechkit,trainer,steps_alone",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "throughput-whisper_scratch-cpu.json").read_text())
    assert summary["spec"]["seq2seq"] and summary["spec"]["batch_duration_s"] is None  # 4 clips a batch, both
    results = summary["results"]
    for system in ("speechkit", "trainer", "steps_alone"):
        r = results[system]
        assert r["steps"] == 2 and r["audio_s_per_s"] > 0 and r["final_loss"] > 0 and r["heldout_loss"] > 0
        assert 0.2 < r["padding"] < 1  # every clip is padded to the 4 s window
        assert r["clips"] == int(num_train)
    alone, speechkit = results["steps_alone"], results["speechkit"]
    assert alone["data_wait"] == 0 and alone["audio_s"] == pytest.approx(speechkit["audio_s"])
    assert alone["heldout_loss"] == pytest.approx(speechkit["heldout_loss"], rel=1e-4)
    assert results["trainer"]["heldout_loss"] != pytest.approx(speechkit["heldout_loss"], rel=1e-4)  # other clips
    assert set(summary["ratios_steps_alone"]) >= {"audio_s_per_s", "heldout_loss"}
    assert "| held-out loss per token after training |" in (out / "throughput-whisper_scratch-cpu.md").read_text()


def test_repeated_runs_report_the_median_run_and_each_rounds_ratio():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import throughput

    runs = {"speechkit": [{"audio_s_per_s": s, "steps": 3} for s in (100.0, 90.0, 120.0)],
            "trainer": [{"audio_s_per_s": s, "steps": 3} for s in (80.0, 75.0, 100.0)]}
    results = {system: throughput.median_run(r) for system, r in runs.items()}
    assert results["speechkit"]["audio_s_per_s"] == 100.0 and results["trainer"]["audio_s_per_s"] == 80.0
    assert results["speechkit"]["throughput_runs"] == [100.0, 90.0, 120.0]
    assert throughput.median_run(runs["speechkit"][:2])["audio_s_per_s"] == 90.0  # of two, the slower
    assert "throughput_runs" not in throughput.median_run(runs["speechkit"][:1])
    table = throughput.markdown(results, "header")
    assert "| training throughput (audio s / s) | 100.0 | 80.0 | 1.25x |" in table
    assert "| throughput of each run, in turn | 100.0, 90.0, 120.0 | 80.0, 75.0, 100.0 | 1.25x, 1.20x, 1.20x |" in table
