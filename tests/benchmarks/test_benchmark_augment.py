"""benchmarks/augment.py runs for real on a tiny budget: both systems trained and scored (no timing or score is
asserted)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, SMALL_DEMO

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


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
