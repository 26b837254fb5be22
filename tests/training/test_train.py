"""End to end on real audio: train a tiny model, ship model/, load it with transformers, evaluate, resume."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.browser import check_report as check_report_in_browser
from conftest import SMALL_DEMO, TINY, compose, jiwer_wer, run_cli, speak, write_metadata
from speechkit.commands import train
from speechkit.config import ConfigError, RunError

FAST = ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
        "trainer.progress_bar=false", "trainer.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def demo_run(asr_demo_run):
    return asr_demo_run


@pytest.mark.slow
def test_run_dir_holds_every_artifact(demo_run):
    run_dir, done = demo_run
    for name in ("config.yaml", "vocab.json", "metrics.jsonl", "drop_report.jsonl", "curves.png", "model/config.json",
                 "model/model.safetensors", "model/vocab.json", "model/processor_config.json", "model/README.md",
                 "checkpoints/step-3/trainer_state.json", "checkpoints/best/model.safetensors"):
        assert (run_dir / name).exists(), name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["kind"] == "train"] == [1, 2, 3]
    assert any(m["kind"] == "eval" and 0 <= m["eval_cer"] for m in lines)
    assert "Final eval on 'test'" in done.stdout and "WER" in done.stdout
    assert "train step=3/3" in done.stderr + done.stdout  # one log line per logging step
    import matplotlib.image

    picture = matplotlib.image.imread(run_dir / "curves.png")  # a real PNG: three panels, 800x900 pixels
    assert picture.shape[:2] == (900, 800) and picture[..., :3].std() > 0.05


def check_report(path, predictions):
    """report.html: one page (nothing fetched from the network: pictures inline, the clips and the curves linked
    inside the run dir) with the scores, WER by duration, the frequent errors, and each utterance aligned, its marked
    errors adding up to jiwer's counts, its clip beside it."""
    import re

    import jiwer

    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for link in re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page):
        assert link.startswith(("data:", "clips/")) or link == "curves.png", link
    for heading in ("WER by clip duration", "Most frequent errors", "Every utterance, aligned"):
        assert f"<h2>{heading}</h2>" in page
    words = jiwer.process_words([p["reference"] for p in predictions], [p["hypothesis"] for p in predictions])
    assert f"WER {words.wer:.4f}" in page
    rows = page.split("<table class='rows utt'")[1].split("</table>")[0]
    assert rows.count("<tr data-sort=") == len(predictions) == rows.count("<audio ")
    assert rows.count("class='ins'") == sum(c.type == "insert" for a in words.alignments for c in a)
    assert rows.count("class='sub'") == words.substitutions


@pytest.mark.slow
def test_evaluate_on_demo_test_split_and_pipeline_agree(demo_run, tmp_path):
    run_dir, _ = demo_run
    done = run_cli("evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO, "split=test",
                   f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo_en/test: WER" in done.stdout and "scored 6 utterances, dropped 0" in done.stdout
    assert "reference" in done.stdout and "hypothesis" in done.stdout  # the side-by-side table
    with open(tmp_path / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 6 and set(predictions[0]) == {"id", "reference", "hypothesis", "wer"}
    check_report(tmp_path / "report.html", predictions)
    # In a real browser, from a copy of the run dir elsewhere: no script error, a clip plays, the table sorts by WER
    seen = check_report_in_browser(tmp_path, tmp_path / "browser")
    assert seen["players"] == 6 and seen["tables"][0]["rows"] == 6 and "curves.png" in seen["links"]
    assert len(list((tmp_path / "clips").glob("*.flac"))) == 6  # the training run's curves, copied beside the page

    # The shipped folder is a plain Hugging Face model: the stock ASR pipeline transcribes a WAV path, and gives
    # exactly what speechkit's own evaluation decoded for that file.
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(run_dir / "model"))
    first = predictions[0]
    assert first["hypothesis"], "a near-random model should emit characters"
    assert asr(first["id"])["text"] == first["hypothesis"]


@pytest.mark.slow
def test_the_hallucination_probe_scores_a_ctc_model_too(demo_run, tmp_path):
    """evaluate.py hallucination_probe=3 on the demo's CTC model: three silent and three noise clips, the words the
    (near-random) model emits on them counted apart from the WER, and listed in report.html."""
    from speechkit.commands import evaluate

    run_dir, _ = demo_run
    result = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO,
                                               "hallucination_probe=3", f"run_dir={tmp_path}"]))
    m = result.metrics
    assert {"eval_probe_words", "eval_probe_silence_words", "eval_probe_noise_words"} <= set(m)
    assert m["eval_probe_words"] == pytest.approx((m["eval_probe_silence_words"] + m["eval_probe_noise_words"]) / 2)
    assert m["eval_utterances"] == 6 and len(result.predictions) == 6  # the probe is not part of the WER
    page = (tmp_path / "report.html").read_text()
    assert page.count("<td>silence</td>") == 3 and page.count("<td>noise</td>") == 3


@pytest.mark.slow
def test_the_report_keeps_the_worst_clips_up_to_its_cap(demo_run, tmp_path, monkeypatch):
    """report.html's clips/ holds the worst utterances first until REPORT_AUDIO_S seconds of audio, and says so."""
    import soundfile as sf

    from speechkit.commands import evaluate
    from speechkit.tasks import scoring

    run_dir, _ = demo_run
    monkeypatch.setattr(scoring, "REPORT_AUDIO_S", 4.0)
    result = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO,
                                               f"run_dir={tmp_path}"]))
    clips = sorted((tmp_path / "clips").glob("*.flac"))
    seconds = [sf.info(c).duration for c in clips]
    assert 0 < len(clips) < 6 and sum(seconds) <= 4.0 and all(sf.info(c).samplerate == 16000 for c in clips)
    page = (tmp_path / "report.html").read_text()
    assert f"{len(clips)} of 6 utterances playable" in page and "left out past 4 s" in page
    assert page.count("<audio ") == len(clips) and page.count("(clip not kept") == 6 - len(clips)
    worst = max(float(p["wer"]) for p in result.predictions)
    first = page.split("clips/00000-")[0].rsplit("<tr data-sort='", 1)[1]
    assert float(first.split("'")[0]) == pytest.approx(worst, abs=1e-4)  # the first clip kept is a worst one


def test_drop_report_and_counts_in_a_real_run(tmp_path):
    """A folder with broken rows trains anyway; every drop is reported with its file and reason."""
    data = tmp_path / "data"
    rows = []
    for i, text in enumerate(["the cat sees a dog", "my old boat is red", "a bird in the park", "one tree"]):
        speak(text, (data / "train").mkdir(parents=True, exist_ok=True) or data / "train" / f"{i}.wav")
        rows.append((f"{i}.wav", text))
    (data / "train" / "bad.wav").write_bytes(b"not audio")
    rows += [("bad.wav", "broken"), ("gone.wav", "missing file"), ("0.wav", "...")]
    write_metadata(data / "train", rows)
    speak("the dog sees a cat", (data / "test").mkdir() or data / "test" / "t.wav")
    write_metadata(data / "test", [("t.wav", "the dog sees a cat")])
    run_dir = tmp_path / "run"
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={data}", "model=tiny", *TINY, *FAST,
                            "trainer.max_steps=2", f"run_dir={run_dir}"])
    wer = train.run(cfg)
    assert wer == pytest.approx(jiwer_wer(run_dir)) and len((run_dir / "predictions.csv").read_text().splitlines()) == 2
    report = [json.loads(line) for line in (run_dir / "drop_report.jsonl").read_text().splitlines()]
    assert sorted((Path(r["file"]).name, r["reason"]) for r in report) == [
        ("0.wav", "empty_transcript"), ("bad.wav", "unreadable_audio"), ("gone.wav", "missing_file")]
    assert (run_dir / "model" / "model.safetensors").exists()


def _resume_cfg(run_dir, *extra):
    return compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, *FAST, "trainer.max_steps=8",
                             "trainer.batch_duration_s=8",  # batches by duration, from the decoded-audio cache
                             "trainer.save_steps=3", "trainer.eval_steps=4", "trainer.save_total_limit=null",
                             "model.mask_time_prob=0.2", "model.hidden_dropout=0.1",  # randomness to restore
                             f"run_dir={run_dir}", *extra])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    train.run(_resume_cfg(full))
    # The same run stopped after step 3: its run dir as it was then (later checkpoints and outputs not yet written),
    # plus a half-written checkpoint from a save that was killed.
    stopped = tmp_path / "stopped"
    shutil.copytree(full, stopped)
    for later in ("step-6", "step-8", "best"):
        shutil.rmtree(stopped / "checkpoints" / later)
    shutil.rmtree(stopped / "model")
    partial = stopped / "checkpoints" / ".tmp-step-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    state = json.loads((stopped / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3

    train.run(_resume_cfg(stopped, "trainer.resume=auto"))
    resumed_state = json.loads((stopped / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    full_state = json.loads((full / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert resumed_state == full_state and resumed_state["global_step"] == 8
    a = load_file(full / "checkpoints" / "step-8" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-8" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    start = load_file(full / "checkpoints" / "step-3" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it did train after step 3


def test_resume_auto_without_checkpoint_starts_fresh_and_bad_path_is_refused(tmp_path):
    cfg = _resume_cfg(tmp_path / "r", "trainer.resume=auto", "trainer.max_steps=1")
    train.run(cfg)
    assert (tmp_path / "r" / "checkpoints" / "step-1").is_dir()
    with pytest.raises(RunError, match=r"trainer.resume: .*nowhere is not a complete checkpoint"):
        train.run(_resume_cfg(tmp_path / "s", f"trainer.resume={tmp_path / 'nowhere'}", "trainer.max_steps=1"))


def _short_run(run_dir, *extra):
    return _resume_cfg(run_dir, "trainer.max_steps=4", "trainer.save_steps=2", "trainer.eval_steps=null",
                       "trainer.eval_at_epoch_end=false", *extra)


def test_a_damaged_newest_checkpoint_is_named_and_skipped_for_the_newest_intact_one(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train.run(_short_run(run_dir))
    ckpts = run_dir / "checkpoints"
    manifest = json.loads((ckpts / "step-4" / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= manifest.keys()
    weights = ckpts / "step-4" / "model.safetensors"
    assert manifest["model.safetensors"]["size"] == weights.stat().st_size
    uninterrupted = {k: v.clone() for k, v in load_file(weights).items()}  # copied: load_file maps the file
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # a copy cut short
        f.truncate(size // 3)

    with caplog.at_level("INFO"):
        train.run(_short_run(run_dir, "trainer.resume=auto"))
    said = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(said) == 1 and f"step-4 is damaged (model.safetensors has {size // 3} bytes of {size})" in said[0]
    assert "skipped for step-2" in said[0]
    assert any(r.getMessage().startswith(f"Resumed from {ckpts / 'step-2'} at step 2") for r in caplog.records)
    again = load_file(weights)  # step-4 made again from step-2: intact, and the same weights as the first time
    assert again.keys() == uninterrupted.keys() and all(torch.equal(again[k], uninterrupted[k]) for k in again)

    flipped = bytearray((ckpts / "step-2" / "optimizer.bin").read_bytes())  # one byte changed, the size kept
    flipped[len(flipped) // 2] ^= 0xFF
    (ckpts / "step-2" / "optimizer.bin").write_bytes(bytes(flipped))
    with pytest.raises(RunError, match=r"checkpoint .*step-2 is damaged \(optimizer.bin does not match its checksum"):
        train.run(_short_run(run_dir, f"trainer.resume={ckpts / 'step-2'}"))
    with open(weights, "r+b") as f:
        f.truncate(10)
    with pytest.raises(RunError) as refused:  # none intact: refused, naming each
        train.run(_short_run(run_dir, "trainer.resume=auto"))
    assert str(refused.value).startswith(f"trainer.resume=auto: no intact checkpoint in {ckpts}: step-4 is damaged "
                                         "(model.safetensors has 10 bytes of")
    assert "; step-2 is damaged (optimizer.bin does not match its checksum)" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_resume_with_another_schedule_is_refused_naming_each_key(tmp_path):
    run_dir = tmp_path / "run"
    train.run(_short_run(run_dir, "trainer.max_steps=2"))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    with pytest.raises(ConfigError) as refused:  # the same step count: only comparing it would let this through
        train.run(_short_run(run_dir, "trainer.max_steps=2", "trainer.resume=auto", "trainer.batch_duration_s=6",
                             "trainer.learning_rate=0.002"))
    said = str(refused.value)
    assert said.startswith(f"trainer.resume: {run_dir / 'checkpoints' / 'step-2'} was made with another schedule (")
    assert "trainer.batch_duration_s=8.0 then, 6.0 now" in said and "trainer.learning_rate=" in said
    assert "trainer.max_steps" not in said and "trainer.batch_size" not in said and "\n" not in said
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before  # nothing changed


def test_non_finite_losses_are_skipped_and_counted(tmp_path):
    """Transcripts far longer than their audio make CTC infinite when ctc_zero_infinity is off."""
    data = tmp_path / "data"
    rows = []
    for i in range(4):
        speak("hi", (data).mkdir(exist_ok=True) or data / f"{i}.wav")
        rows.append((f"{i}.wav", "this transcript is much too long for such a short clip of audio " * 2))
    write_metadata(data, rows)
    run_dir = tmp_path / "run"
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={data}", "dataset.carve.from_split=train",
                            "dataset.carve.test_ratio=0.5", "model=tiny", *TINY, *FAST, "trainer.batch_size=2",
                            "task.ctc_zero_infinity=false", "trainer.max_steps=2", f"run_dir={run_dir}"])
    train.run(cfg)
    train_logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_nonfinite"] for m in train_logs if m["kind"] == "train"] == [1, 2]


def test_a_checkpoint_of_the_earlier_layout_is_read():
    """trainer_state.json as speechkit wrote it before one data position: a split's epoch and batch, a stream's
    positions and drops, each read into the batches' position."""
    from speechkit.training.trainer import TrainerState

    split = TrainerState.read({"global_step": 7, "epoch": 1, "batches_done_in_epoch": 3, "total_steps": 20,
                               "stream_positions": None, "stream_drops": None})
    assert split.data == {"epoch": 1, "batches_done": 3} and split.global_step == 7
    stream = TrainerState.read({"global_step": 4, "epoch": 0, "batches_done_in_epoch": 0, "total_steps": 9,
                                "stream_positions": [[1, 0, 2]], "stream_drops": [{"file": "a.wav"}]})
    assert stream.data == {"positions": [[1, 0, 2]], "drops": [{"file": "a.wav"}]}
    assert TrainerState.read({"global_step": 2, "data": {"epoch": 0, "batches_done": 2}}).data["batches_done"] == 2


@pytest.mark.slow
def test_the_model_card_describes_the_shipped_model(demo_run):
    """model/README.md: huggingface_hub reads it back; its model-index holds the shipped model's final scores, and it
    says how the model was trained (the command typed) and how to use it."""
    from huggingface_hub import ModelCard

    run_dir, _ = demo_run
    card = ModelCard.load(run_dir / "model" / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "automatic-speech-recognition" and data["language"] == "en"
    assert data["library_name"] == "transformers" and "speechkit" in data["tags"]
    final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    scores = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert scores == {"wer": round(final["eval_wer"], 4), "cer": round(final["eval_cer"], 4)}
    assert data["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    assert "python train.py experiment=demo" in card.text and "trainer.max_steps=3" in card.text
    assert "| learning_rate | 1e-06 |" in card.text and 'pipeline("automatic-speech-recognition"' in card.text


@pytest.mark.slow
def test_hub_push_uploads_model_with_its_card(tmp_path, monkeypatch):
    """hub.push=true: the repo is created and model/ uploaded, card included, with huggingface_hub's own calls (their
    arguments recorded here: no test reaches the Hub). Without hub.repo_id the run is refused before any work."""
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or
                        type("Commit", (), {"commit_url": f"https://hub/{kw['repo_id']}/commit/1"})())
    run_dir = tmp_path / "run"
    train.run(compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, *FAST, "trainer.max_steps=1",
                                   "hub.push=true", "hub.repo_id=me/tiny-demo", f"run_dir={run_dir}"]))
    assert calls[0] == ("create_repo", "me/tiny-demo", {"private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_id"] == "me/tiny-demo" and Path(upload["folder_path"]) == run_dir / "model"
    assert {"README.md", "model.safetensors", "config.json"} <= {p.name for p in (run_dir / "model").iterdir()}
    done = run_cli("train.py", "experiment=demo", "hub.push=true", f"hydra.run.dir={tmp_path / 'refused'}")
    assert done.returncode == 2 and "hub.repo_id" in done.stderr and "Traceback" not in done.stderr
