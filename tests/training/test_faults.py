"""Faults: training killed at random moments (some inside checkpoint writes) continues exactly; a checkpoint that
cannot be written (the disk full) leaves the previous one usable and stops the run with a clear message."""

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL_DEMO, TINY, free_port

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


def test_fault_campaign_continues_exactly_after_every_kill(tmp_path):
    num_train, num_test = (o.split("=")[1] for o in SMALL_DEMO)
    done = subprocess.run([sys.executable, "benchmarks/faults.py", "--kills", "2", "--steps", "6", "--num-train",
                           num_train, "--num-test", num_test, "--stream-steps", "8", "--hostile-rounds", "1",
                           "--normal-requests", "8",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "faults.json").read_text())
    # two kills, the last run stopped by the full disk, one more to write model/
    assert result["kills"] == 2 and result["runs"] == 4 and result["exact_continuation"] is True
    assert result["kills_inside_checkpoint_write"] >= 1  # the second kill waits for a write under way
    damaged = result["kill_log"][0]["damaged_after"]  # cut short after the first kill, named and skipped
    assert damaged and result["damaged_checkpoints_skipped"][0] == f"step-{damaged}"
    assert result["resumed_from_steps"][0] == damaged - 1
    disk = result["full_disk_at_the_end"]
    assert disk["injected"] and not disk["trained_again"] and result["resumed_from_steps"][-1] == 6
    (refused,) = disk["refused"]
    assert refused.startswith("speechkit: error: ") and "/model could not be written (" in refused
    assert refused.endswith("the newest intact checkpoint is step-6: free some space, then continue with "
                            "trainer.resume=auto, which writes it")
    stream = result["stream"]  # 6 steps an epoch: the damaged shard is read again in the second at the latest
    assert stream["exit_code"] == 1 and stream["stopped_in_one_line"] and stream["exact_continuation"] is True
    assert 2 <= stream["damaged_at_step"] <= stream["stopped_at_step"] == stream["resumed_from_step"] < 8
    hostile = result["hostile"]
    assert hostile["every_answer_2xx_4xx_503"] and hostile["server_alive"]
    assert hostile["hostile_requests"] == 26  # 2 clients x 13 kinds
    assert hostile["hostile_by_kind"]["nested JSON"] == {"400": 2}
    assert hostile["hostile_by_kind"]["33 min of JSON at 1 kHz"] == {"413": 2}
    assert hostile["hostile_by_kind"]["an hour of FLAC"] == {"413": 2}
    assert hostile["hostile_by_kind"]["100 MB Content-Length"] == {"413": 2}
    assert hostile["normal_statuses"] == {"200": 16}
    assert "| final weights bit-identical to the uninterrupted run | yes |" in done.stdout
    assert "| every answer 2xx, 4xx or 503 | yes |" in done.stdout


def _train(run_dir, *extra, file_limit=None):
    def limit():  # every file this process writes stops growing at `file_limit` bytes, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=demo", "hw=cpu", *SMALL_DEMO, *TINY,
                           "trainer.batch_size=4", "trainer.batch_duration_s=null", "trainer.max_steps=6",
                           "trainer.save_steps=2", "trainer.save_total_limit=null", "trainer.eval_at_epoch_end=false",
                           "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600, preexec_fn=limit if file_limit else None)


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one_and_says_what_to_do(tmp_path):
    run_dir = tmp_path / "run"
    assert _train(run_dir).returncode == 0
    for later in ("step-4", "step-6", "best"):  # the run as it was after step 2
        shutil.rmtree(run_dir / "checkpoints" / later)
    shutil.rmtree(run_dir / "model")
    weights = (run_dir / "checkpoints" / "step-2" / "model.safetensors").stat().st_size

    full = _train(run_dir, "trainer.resume=auto", file_limit=weights // 2)
    last = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert last.startswith("speechkit: error: checkpoint step-4 could not be written") and "step-2, is intact" in last
    assert "trainer.resume=auto" in last
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]  # no half-written folder left

    again = _train(run_dir, "trainer.resume=auto")  # space freed: it goes on from step 2 and finishes
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step-6" / "trainer_state.json").exists()
    assert "Resumed from" in (run_dir / "train.log").read_text()


def test_under_two_processes_a_failed_checkpoint_write_stops_both_without_a_hang(tmp_path):
    """DDP: the main process cannot write the weights, the other writes its own files fine; they agree on the
    failure instead of waiting for each other, and both stop with the message."""
    run_dir = tmp_path / "run"
    assert _train(run_dir, "trainer.max_steps=2", "trainer.save_steps=null").returncode == 0  # the corpus cached
    weights = (run_dir / "model" / "model.safetensors").stat().st_size
    shutil.rmtree(run_dir)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (weights // 2, weights // 2))

    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), str(REPO / "train.py"), "experiment=demo", "hw=cpu", *SMALL_DEMO, *TINY,
                           "trainer.batch_size=4", "trainer.batch_duration_s=null", "trainer.max_steps=2",
                           "trainer.save_steps=1", "trainer.eval_at_epoch_end=false", "trainer.progress_bar=false",
                           f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert done.returncode != 0
    assert done.stderr.count("speechkit: error: checkpoint step-1 could not be written") == 2, done.stderr[-3000:]
    assert not any((run_dir / "checkpoints").glob(".tmp-step-*"))
