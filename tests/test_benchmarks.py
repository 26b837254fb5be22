"""The benchmarks run for real on a tiny budget: both systems measured and reported (no timing is asserted)."""

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


def test_throughput_benchmark_runs_whisper_against_the_seq2seq_trainer(tmp_path):
    out = tmp_path / "out"
    num_train, num_test = (o.split("=")[1] for o in SMALL_DEMO)
    done = subprocess.run([sys.executable, "benchmarks/throughput.py", "--device", "cpu", "--model", "whisper_scratch",
                           "--num-train", num_train, "--num-test", num_test, "--max-steps", "2", "--batch-size", "4",
                           "--logging-steps", "1", "--systems", "speechkit_ungrouped,trainer",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "throughput-whisper_scratch-cpu.json").read_text())
    assert summary["spec"]["seq2seq"] and summary["spec"]["batch_duration_s"] is None  # 4 clips a batch, both
    for system in ("speechkit_ungrouped", "trainer"):  # speechkit itself runs the seq2seq path in test_whisper.py
        r = summary["results"][system]
        assert r["steps"] == 2 and r["audio_s_per_s"] > 0 and r["final_loss"] > 0
        assert 0.2 < r["padding"] < 1  # every clip is padded to the 4 s window
    assert r["clips"] == int(num_train)


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


def test_augment_benchmark_trains_both_systems_and_scores_the_shifted_set(tmp_path):
    from conftest import TINY

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/augment.py", "--augment", "[speed,noise]", "--seeds", "1,2",
                           "--out", str(out), *SMALL_DEMO, *TINY, "trainer.max_steps=2", "trainer.logging_steps=1",
                           "augment.warmup_epochs=1"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "augment.json").read_text())
    assert set(report["systems"]) == {"none", "[speed,noise]"} and report["seeds"] == [1, 2]
    for name, r in report["systems"].items():
        assert r["steps"] == 2 and r["train_wall_s"] > 0 and 0 <= r["data_wait"] < 1
        for split in ("held_out", "shifted_test", "shifted_test_noisy", "shifted_test_reverb"):
            assert r[split]["utterances"] == 6 and 0 <= r[split]["cer"]
        runs = report["per_seed"][name]  # the figures are the seeds' means
        assert len(runs) == 2 and r["held_out"]["cer"] == sum(x["held_out"]["cer"] for x in runs) / 2
    augmented = (out / "speed+noise-seed2.train.log").read_text()  # augment.* overrides: its own, not none's
    assert "Augmentation (conf/augment): speed x0.9/1/1.1; noise on 50%" in augmented
    assert "over the first 1 epochs" in augmented and "over the first" not in (out / "none-seed2.train.log").read_text()
    assert "trainer.seed=2" in (out / "none-seed2" / ".hydra" / "overrides.yaml").read_text().replace("- ", "")
    assert set(report["targets_met"]) == {"shifted_cer_cut>=0.30", "held_out_cer_change<=0.005", "wall_ratio<=1.2",
                                          "data_wait<0.05"}
    assert "shifted CER cut" in done.stdout
