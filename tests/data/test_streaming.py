"""dataset.streaming=true on real audio: a local folder's files and a Hub data set (a local parquet copy in the Hub's
layout) streamed, rows checked as they come and their drops reported, every usable row once per epoch, batches by
duration, exact resume, and two processes each reading their own share."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from datasets import IterableDataset
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import SMALL_DEMO, TINY, compose, speak, write_metadata
from support.hub_fixtures import FLEURS_ROWS, make_fleurs
from speechkit import data
from speechkit.commands import train
from speechkit.data import streaming
from speechkit.tasks import make_task
from conftest import accelerate_launch

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)

FAST = ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
        "trainer.progress_bar=false", "trainer.learning_rate=1e-3"]
SENTENCES = ["the cat sat", "a dog ran home", "we like green tea", "the sun is up", "it is cold today",
             "go left now", "she reads a book", "open the door", "birds can fly"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An audiofolder with nine spoken clips, a silent one and a row whose file is gone."""
    root = tmp_path_factory.mktemp("stream_folder")
    rows = []
    for i, text in enumerate(SENTENCES):
        speak(text, root / f"{i}.wav")
        rows.append((f"{i}.wav", text))
    sf.write(root / "silent.wav", np.zeros(16000, np.float32), 16000)
    write_metadata(root, rows + [("silent.wav", "nothing at all"), ("gone.wav", "never recorded")])
    return root


@pytest.fixture(scope="module")
def fleurs(tmp_path_factory):
    return make_fleurs(tmp_path_factory.mktemp("fleurs"))


def _fitted(tmp_path, folder, *overrides):
    """The config and the real speech-recognition task, its vocab fitted on the stream's transcripts."""
    cfg = OmegaConf.to_object(compose("train", [
        "dataset=audiofolder", f"dataset.path={folder}", "dataset.carve.from_split=train", "model=tiny", *TINY,
        "dataset.streaming=true", "trainer.max_steps=4", "dataset.shuffle_buffer=4", "trainer.batch_duration_s=4",
        f"run_dir={tmp_path}", *overrides]))
    task = make_task(cfg)
    task.model_config(cfg.model)  # the model's head decides the kind of speech recognition: CTC here
    rows = streaming.target_rows(cfg.dataset, task.target, "train")
    task.fit_targets(rows, rows, ("train", "train"), data.DropReport(), str(tmp_path), True)
    task.build_model(cfg.model, str(tmp_path))
    return cfg, task


def _take(batches, count):
    it = iter(batches)
    return [next(it) for _ in range(count)]


def test_a_stream_gives_every_usable_row_once_per_epoch_and_reports_drops_once(tmp_path, folder):
    cfg, task = _fitted(tmp_path, folder)
    carved = data.load_source(cfg.dataset, data.TEXT)["train"]  # the carve of a local folder works as without streaming
    batches = streaming.training_batches(cfg.dataset, cfg.trainer, task, (400, None), Accelerator(cpu=True),
                                         data.DropReport(), None)
    assert isinstance(batches.stream, IterableDataset)
    got = _take(batches, 12)
    by_epoch = {}
    for b in got:
        epoch = b["position"][0] - (1 if b["end_of_epoch"] else 0)
        by_epoch.setdefault(epoch, []).append(b)
        assert len(b["items"]) * max(len(x["input_values"]) for x in b["items"]) <= 4 * 16000  # the duration budget
    usable = sorted(tuple(task.target_of(t)[0]) for t in carved["text"]
                    if t not in ("nothing at all", "never recorded"))
    for epoch in (0, 1):
        seen = sorted(tuple(x["labels"]) for b in by_epoch[epoch] for x in b["items"])
        assert seen == usable, epoch  # every usable row, each once
        assert by_epoch[epoch][-1]["end_of_epoch"] and by_epoch[epoch][-1]["position"] == (epoch + 1, 0, 0)
    drops = [d for b in got for d in b["dropped"]]
    expected = {name for name, text in (("silent.wav", "nothing at all"), ("gone.wav", "never recorded"))
                if text in carved["text"]}
    assert {d["file"].split("/")[-1] for d in drops} == expected  # reported in the first epoch only
    assert {d["reason"] for d in drops} <= {"silent", "missing_file"} and len(drops) == len(expected)
    # Epochs differ (shards and batches reshuffled), yet each is fixed by (seed, epoch).
    assert [x["index"] for x in by_epoch[0][0]["items"]] != [] and \
        [tuple(x["labels"]) for b in by_epoch[0] for x in b["items"]] != \
        [tuple(x["labels"]) for b in by_epoch[1] for x in b["items"]]


def test_a_stream_started_from_a_position_goes_on_exactly_as_the_whole_stream(tmp_path, folder):
    cfg, task = _fitted(tmp_path, folder)
    make = lambda: streaming.training_batches(cfg.dataset, cfg.trainer, task, (400, None), Accelerator(cpu=True),  # noqa: E731
                                              data.DropReport(), None)
    whole = _take(make(), 10)
    for k in (2, 5):  # mid-window and mid-epoch positions alike
        resumed = make()
        resumed.start = whole[k]["position"]
        for a, b in zip(_take(resumed, 10 - k - 1), whole[k + 1:]):
            assert a["position"] == b["position"]
            assert [x["index"] for x in a["items"]] == [x["index"] for x in b["items"]]
            assert all(np.array_equal(x["input_values"], y["input_values"]) for x, y in zip(a["items"], b["items"]))


def test_each_process_streams_its_own_share(folder):
    cfg = OmegaConf.to_object(compose("train", ["dataset=audiofolder", f"dataset.path={folder}",
                                                "dataset.streaming=true", "trainer.max_steps=1", "run_dir=/x"])).dataset
    shares = [[r["audio"]["path"] for r in streaming.open_stream(cfg, data.TEXT, "train", 0, rank, 2)]
              for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(str(folder / f) for f in
                                                   [f"{i}.wav" for i in range(9)] + ["silent.wav", "gone.wav"])


def _hub(fleurs):
    """The ROCm recipe's data set (its local copy) streamed, with a tiny model."""
    return ["dataset=fleurs_es", f"dataset.path={fleurs}", "dataset.revision=null", "model=tiny", *TINY, *FAST,
            "dataset.streaming=true", "dataset.shuffle_buffer=3"]


def test_a_streamed_hub_data_set_trains_and_reports_the_rows_it_dropped(fleurs, tmp_path):
    train.run(compose("train", [*_hub(fleurs), "trainer.max_steps=4", "trainer.save_steps=2",
                                   f"run_dir={tmp_path}"]))
    report = [json.loads(line) for line in (tmp_path / "drop_report.jsonl").read_text().splitlines()]
    streamed = [r for r in report if r["split"] == "train"]
    silent = {f"train_{i}.wav" for i, (raw, _) in enumerate(FLEURS_ROWS["train"]) if raw is None}
    assert sorted(r["file"] for r in streamed) == sorted(silent) and {r["reason"] for r in streamed} == {"silent"}
    state = json.loads((tmp_path / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert len(state["data"]["positions"]) == 1 and state["data"]["positions"][0][0] >= 1  # past its first epoch
    assert len(state["data"]["drops"]) == 2
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert "n" in vocab and "ñ" not in vocab  # built from the streamed transcripts, normalized (unidecode)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_streamed_run_resumes_exactly(tmp_path, folder):
    def cfg(run_dir, *extra):
        return compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, *FAST, "dataset.streaming=true",
                                 "dataset.shuffle_buffer=5", "trainer.batch_duration_s=6", "trainer.max_steps=9",
                                 "trainer.save_steps=4", "trainer.save_total_limit=null", "model.mask_time_prob=0.2",
                                 "model.hidden_dropout=0.1", f"run_dir={run_dir}", *extra])

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.run(cfg(full))
    shutil.copytree(full, stopped)
    for later in ("checkpoints/step-8", "checkpoints/step-9", "checkpoints/best", "model"):
        shutil.rmtree(stopped / later)
    position = json.loads((stopped / "checkpoints" / "step-4" / "trainer_state.json").read_text())["data"]["positions"]
    assert position != [[0, 0, 0]]
    train.run(cfg(stopped, "trainer.resume=auto"))
    a = load_file(full / "checkpoints" / "step-9" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-9" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "checkpoints" / "step-9" / "trainer_state.json").read_text()) == \
        json.loads((stopped / "checkpoints" / "step-9" / "trainer_state.json").read_text())


def test_two_processes_stream_disjoint_shares_and_report_each_drop_once(fleurs, tmp_path):
    run_dir = tmp_path / "run"
    done = accelerate_launch(*_hub(fleurs), "hw=cpu", "trainer.max_steps=3", "trainer.save_steps=3",
                             f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-5000:]
    state = json.loads((run_dir / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert len(state["data"]["positions"]) == 2  # one position per process
    assert all(p[0] >= 1 for p in state["data"]["positions"])  # each went through its whole share
    report = [json.loads(line) for line in (run_dir / "drop_report.jsonl").read_text().splitlines()]
    silent = {f"train_{i}.wav" for i, (raw, _) in enumerate(FLEURS_ROWS["train"]) if raw is None}
    assert sorted(r["file"] for r in report if r["split"] == "train") == sorted(silent)  # each once, by its reader
    assert (run_dir / "model" / "model.safetensors").is_file()



def test_inspecting_a_streamed_hub_data_set_reads_every_split_whole(fleurs, tmp_path):
    from speechkit.commands import inspect_data

    def summary(streamed, where):
        return inspect_data.run(compose("inspect", ["dataset=fleurs_es", f"dataset.path={fleurs}",
                                                  "dataset.revision=null", f"dataset.streaming={streamed}",
                                                  f"run_dir={tmp_path / where}"]))

    assert summary("true", "s") == summary("false", "w")


def test_a_loader_worker_reads_the_stream_as_the_main_process_does(tmp_path, folder):
    """On a GPU the stream is read in one loader worker: the same batches, positions and drops as without one."""
    cfg, task = _fitted(tmp_path, folder)

    def batches(workers):
        stream = streaming.training_batches(cfg.dataset, cfg.trainer, task, (400, None), Accelerator(cpu=True),
                                            data.DropReport(), None)
        loading = {"num_workers": workers, "pin_memory": False, "prefetch_factor": 2}
        it = iter(streaming.loader(stream, task.collator(True), loading, seed=0))
        return [next(it) for _ in range(8)]

    for a, b in zip(batches(0), batches(1)):
        assert a["position"] == b["position"] and a["dropped"] == b["dropped"]
        assert torch.equal(a["input_values"], b["input_values"]) and torch.equal(a["labels"], b["labels"])


def test_a_stream_whose_source_fails_mid_run_stops_in_one_line_and_resumes_exactly(fleurs, tmp_path):
    """The training split in two parquet shards. While `python train.py` trains on the one it reads first, the data
    of the other is damaged (its footer intact; as a bad block, or a remote read failing after datasets' retries):
    the run stops in one line saying where the stream stood when it next opens that shard (here: at the start of
    the next epoch, datasets having read the small shard whole before it was damaged), its checkpoints intact; with
    the shard back, trainer.resume=auto ends with the weights of a run that never failed. Damaged before the run,
    it is refused in one line while the transcripts are read, before any training."""
    import os
    import re
    import subprocess
    import sys
    import time

    from datasets import Dataset

    from conftest import REPO
    from speechkit.config import RunError
    from speechkit.data import columns
    from speechkit.data.audio import audio_ref

    copy = tmp_path / "fleurs"
    shutil.copytree(fleurs, copy)
    split = copy / "es_419" / "train"
    whole = Dataset.from_parquet(str(split / "0000.parquet"))
    (split / "0000.parquet").unlink()
    for i in range(2):  # 4 rows, then 3 (the two near-silent ones among them)
        whole.shard(2, i, contiguous=True).to_parquet(str(split / f"000{i}.parquet"))
    overrides = [*_hub(copy), "trainer.max_steps=6", "trainer.save_steps=1", "trainer.save_total_limit=null",
                 "dataset.shuffle_buffer=1", "trainer.batch_duration_s=null", "trainer.batch_size=1", "hw=cpu"]

    reference = compose("train", [*overrides, f"run_dir={tmp_path / 'reference'}"])
    stream = streaming.open_stream(OmegaConf.to_object(reference).dataset,
                                   make_task(OmegaConf.to_object(reference)).target, "train", reference.trainer.seed)
    stream.set_epoch(0)
    first = audio_ref(next(iter(stream))[columns.AUDIO])  # the first row the stream reads, by its file name
    in_first_shard = any(first.endswith(name) for name in whole.shard(2, 0, contiguous=True)["path"])
    later = split / ("0001.parquet" if in_first_shard else "0000.parquet")
    train.run(reference)
    good = later.read_bytes()
    damaged = good[:4] + bytes(len(good) // 2) + good[4 + len(good) // 2:]  # its data pages overwritten

    run_dir = tmp_path / "failed"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_step = run_dir / "checkpoints" / "step-1" / "trainer_state.json"
    deadline = time.time() + 300
    while not first_step.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    # Replaced whole (as a sync tool does), never torn: a reader that caught the file half-written could decode
    # rows of the two versions mixed, train on them, and no resume could match the reference. datasets reads the
    # shards interleaved and ahead, so the failure comes in the first epoch or when the second reads the file again.
    torn = later.with_suffix(".partial")
    torn.write_bytes(damaged)
    os.replace(torn, later)
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and re.match(r"speechkit: error: the training stream failed after stream at epoch "
                                             r"\d+, window \d+, batch \d+ \(OSError: ", lines[-1]), err[-3000:]
    assert lines[-1].endswith("the checkpoints are intact: continue with trainer.resume=auto once the data can be "
                              "read again (the stream goes on from the checkpoint's position)")
    assert "Traceback" not in err
    done = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert 1 <= done[-1] < 6  # it trained for a while, then stopped

    with pytest.raises(RunError, match=r"^dataset.path: the 'train' split could not be read through \(OSError"):
        train.run(compose("train", [*overrides, f"run_dir={tmp_path / 'refused'}"]))  # damaged from the start

    later.write_bytes(good)
    train.run(compose("train", [*overrides, f"run_dir={run_dir}", "trainer.resume=auto"]))
    a = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
