"""Speaker diarization on real audio (espeak-ng conversations): the permutation-invariant loss, RTTM, DER against
pyannote.metrics, tiny end-to-end training, evaluate.py, diarize.py on a file and a folder (with an ASR model: who
said what), the CallHome recipe's Hub layout, and bad references answered clearly."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, Dataset, Features, List as ListOf, Value

from support.browser import check_report
from conftest import TINY, compose, run_cli, speak, write_metadata
from speechkit.commands import evaluate, train
from speechkit.recordings import attribute
from speechkit.data.references import BadReference, check_turns, read_turns, write_rttm
from speechkit.tasks.diarization import der, frame_targets, pit_loss, turns_from_activity

DEMO = ["experiment=demo_diarization", "dataset.demo.num_train=12", "dataset.demo.num_test=3", *TINY,
        "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.logging_steps=1", "trainer.warmup_steps=1",
        "trainer.progress_bar=false"]


# ------------------------------------------------------------------------------------------- the pieces
def test_the_pit_loss_does_not_care_which_output_a_speaker_gets():
    targets = torch.zeros(1, 6, 2)
    targets[0, :3, 0] = 1  # speaker A talks first, B after
    targets[0, 3:, 1] = 1
    swapped = (targets[:, :, [1, 0]] * 2 - 1) * 20  # confident logits, A on output 1 and B on output 0
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert pit_loss(swapped, targets, mask) < 1e-6
    wrong = (targets * 0 + 1) * 20  # both outputs always on
    assert pit_loss(wrong, targets, mask) > 1.0
    # padding frames count for nothing
    padded = torch.cat([swapped, torch.full((1, 2, 2), 20.0)], dim=1)
    assert pit_loss(padded, torch.cat([targets, torch.zeros(1, 2, 2)], 1),
                    torch.tensor([[True] * 6 + [False] * 2])) < 1e-6


def test_rttm_written_and_read_back(tmp_path):
    turns = [(0.5, 2.25, "alice"), (1.75, 3.0, "bob"), (4.0, 6.5, "alice")]
    write_rttm(turns, "meeting", str(tmp_path / "meeting.rttm"))
    assert read_turns(str(tmp_path / "meeting.rttm"), str(tmp_path / "meeting.wav")) == turns
    assert (tmp_path / "meeting.rttm").read_text().splitlines()[0].split()[:5] == \
        ["SPEAKER", "meeting", "1", "0.500", "1.750"]


def test_der_equals_pyannote_metrics_on_a_known_case():
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from speechkit.data.references import to_annotation

    reference = [(0.0, 10.0, "A"), (10.0, 20.0, "B")]
    hypothesis = [(0.0, 8.0, "s1"), (8.0, 19.0, "s2"), (19.0, 20.0, "s3"), (20.0, 22.0, "s1")]
    scores, rows = der([reference], [hypothesis], ["x"], [22.0], collar=0.0, skip_overlap=False)
    # by hand: 2 s of A called s2 (confusion) + 1 s of B called s3 (confusion), 2 s after the end spoken by nobody
    # in the reference (false alarm); 20 s of reference speech
    assert scores["confusion"] == pytest.approx(3 / 20) and scores["false_alarm"] == pytest.approx(2 / 20)
    assert scores["missed"] == 0 and scores["der"] == pytest.approx(5 / 20)
    uem = Timeline([Segment(0, 22)])
    assert scores["der"] == pytest.approx(DiarizationErrorRate()(to_annotation(reference, "x"),
                                                                 to_annotation(hypothesis, "x"), uem=uem))
    assert rows[0]["speakers"] == 2 and rows[0]["found"] == 3
    with_collar, _ = der([reference], [hypothesis], ["x"], [22.0], collar=0.5, skip_overlap=False)
    assert with_collar["der"] < scores["der"]  # the boundaries' neighbourhoods are not scored


def test_frame_targets_turn_back_into_the_same_turns():
    turns = [(0.2, 1.0, "a"), (0.8, 1.6, "b"), (2.0, 2.4, "a")]
    target = frame_targets(turns, ["a", "b"], 0.0, 150, 0.02, 3)
    assert target.shape == (150, 3) and target[:, 2].sum() == 0
    back = turns_from_activity(target.numpy(), 0.02, 0.5, 0.1)
    assert back == [(0.2, 1.0, "SPEAKER_00"), (0.8, 1.6, "SPEAKER_01"), (2.0, 2.4, "SPEAKER_00")]


@pytest.mark.parametrize("turns,seconds,reason", [
    ([(0.0, 9.0, "a")], 5.0, "turn_past_end"),
    ([(0.0, 3.0, "a"), (2.0, 4.0, "a")], 5.0, "overlapping_turns"),
    ([(0.0, 1.0, "a"), (1.0, 2.0, "b"), (2.0, 3.0, "c")], 5.0, "too_many_speakers"),
    ([(2.0, 1.0, "a")], 5.0, "bad_turn"),
])
def test_bad_references_are_named(turns, seconds, reason):
    with pytest.raises(BadReference) as caught:
        check_turns(turns, seconds, max_speakers=2)
    assert caught.value.reason == reason


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diarization_run")
    done = run_cli("train.py", *DEMO, "trainer.max_steps=4", "trainer.eval_steps=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


@pytest.mark.slow
def test_a_tiny_diarizer_trains_scores_by_der_and_ships(demo_run):
    run_dir, done = demo_run
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForAudioFrameClassification"] and len(config["id2label"]) == 3
    assert config["speechkit_diarization"]["collar_s"] == 0.25
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [m["step"] for m in evals] == [2, 4]
    for m in evals:
        assert m["eval_recordings"] == 3 and m["eval_der"] == pytest.approx(
            m["eval_missed"] + m["eval_false_alarm"] + m["eval_confusion"])
    assert "Final eval on 'test' (3 recordings): DER" in done.stdout and "collar 0.25 s, overlap scored" in done.stdout
    predictions = (run_dir / "predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("id,recording,der,missed,false_alarm,confusion") and len(predictions) == 4
    assert "Who spoke when" in (run_dir / "report.html").read_text()
    from PIL import Image

    curves = Image.open(run_dir / "curves.png")  # what it plots, from its own Description text
    trains = sum(1 for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in x)
    best = min(evals, key=lambda m: m["eval_der"])
    assert curves.size == (800, 900) and curves.text["Description"] == (
        f"Training curves over {trains} logged steps and 2 evaluations: train loss; learning rate; eval scores: DER; "
        f"best eval: DER {best['eval_der']:.4f} at step {best['step']}")  # no eval loss: recordings are scored whole
    card = (run_dir / "model" / "README.md").read_text()
    assert "voice-activity-detection" in card and "DER" in card


@pytest.mark.slow
def test_evaluate_prints_der_and_writes_the_per_recording_table(demo_run, tmp_path, capsys):
    run_dir, _ = demo_run
    result = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_diarization",
                                                 "dataset.demo.num_train=12", "dataset.demo.num_test=3", "split=test",
                                                 "collar_s=0.5", "hw=cpu", f"run_dir={tmp_path}"]))
    printed = capsys.readouterr().out
    assert "demo_diarization/test: DER" in printed and "collar 0.5 s" in printed and "scored 3 recordings" in printed
    assert result.metrics["eval_recordings"] == 3 and result.objective == result.metrics["eval_der"]
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 4

    # report.html: each recording's reference and hypothesis turns on a timeline with its audio, the worst DER first;
    # in a real browser a click on a turn plays the recording from the turn's start
    page = (tmp_path / "report.html").read_text()
    assert page.count("<div class='rec'") == 3 == page.count("<audio ") and "curves.png" in page
    ders = [float(x) for x in re.findall(r"</b> DER ([0-9.]+)", page)]
    assert ders == sorted(ders, reverse=True) and len(ders) == 3
    seen = check_report(tmp_path, tmp_path / "browser", also="""(async function () {
      var turn = document.querySelectorAll('.rec .turn')[1], rec = turn.closest('.rec');
      var audio = rec.querySelector('audio');
      audio.preload = 'auto';
      await new Promise(function (done) {
        if (audio.readyState >= 1) { done(); } else { audio.addEventListener('loadedmetadata', done); }
      });
      turn.click();
      await new Promise(function (done) { setTimeout(done, 300); });
      audio.pause();
      return {start: parseFloat(turn.dataset.start), now: audio.currentTime,
              head: parseFloat(rec.querySelector('.playhead').style.left)};
    })()""")
    assert seen["players"] == 3 and seen["played"]["readyState"] >= 1
    clicked = seen["also"]
    assert clicked["start"] <= clicked["now"] < clicked["start"] + 1.0, clicked  # played from the turn's start
    assert clicked["head"] > 0, clicked  # the playhead follows


@pytest.mark.slow
def test_diarize_py_on_a_file_and_a_folder(demo_run, tmp_path):
    run_dir, _ = demo_run
    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted(_corpus().glob("test/*.wav"))
    for wav in source[:2]:
        shutil.copy(wav, folder / wav.name)
    done = run_cli("diarize.py", f"model_dir={run_dir / 'model'}", f"audio={folder / source[0].name}",
                   f"output_dir={tmp_path / 'one'}", "hw=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    rttm = tmp_path / "one" / f"{source[0].stem}.rttm"
    assert rttm.is_file() and "Diarized 1 of 1 file(s)" in done.stdout
    lines = [x for x in done.stdout.splitlines() if x.startswith("start=")]
    assert all(x.split()[2].startswith("speaker_SPEAKER_") for x in lines)  # the recipe's format
    assert len(lines) == len(rttm.read_text().splitlines())
    from speechkit.commands import diarize

    done = diarize.run(compose("diarize", [f"model_dir={run_dir / 'model'}", f"audio={folder}", "hw=cpu"]))
    assert len(done["done"]) == 2 and sorted(p.name for p in folder.glob("*.rttm")) == \
        sorted(f"{w.stem}.rttm" for w in source[:2])


@pytest.mark.slow
def test_diarize_py_takes_a_recording_whose_name_has_spaces_and_accents(demo_run, tmp_path):
    """RTTM's fields are separated by spaces: the file id is written with `_` for them, the output keeps the name."""
    from pyannote.database.util import load_rttm

    from speechkit.commands import diarize

    run_dir, _ = demo_run
    wav = tmp_path / "réunion du lundi.wav"
    shutil.copy(sorted(_corpus().glob("test/*.wav"))[0], wav)
    done = diarize.run(compose("diarize", [f"model_dir={run_dir / 'model'}", f"audio='{wav}'",  # quoted for Hydra
                                           "hw=cpu", "progress_bar=false"]))
    rttm = tmp_path / "réunion du lundi.rttm"
    assert done["done"][0]["file"] == str(wav) and not done["failed"]
    assert list(load_rttm(str(rttm))) == ["réunion_du_lundi"] and rttm.read_text().strip()
    assert not list(tmp_path.glob("*.partial"))


def _corpus():
    from omegaconf import OmegaConf

    from speechkit.data.demo_corpus import corpus_dir

    return Path(corpus_dir(OmegaConf.to_object(compose("train", [*DEMO, "run_dir=/x"])).dataset))


def test_words_go_to_the_speaker_talking_at_their_middle():
    turns = [(0.0, 2.0, "SPEAKER_00"), (2.5, 4.0, "SPEAKER_01")]
    words = [{"word": w, "start": a, "end": b} for w, a, b in
             [("hello", 0.1, 0.5), ("there", 0.6, 1.0), ("hi", 2.6, 2.9), ("you", 3.0, 3.3), ("late", 4.3, 4.6)]]
    assert attribute(turns, words) == [
        {"speaker": "SPEAKER_00", "start": 0.1, "end": 1.0, "text": "hello there"},
        {"speaker": "SPEAKER_01", "start": 2.6, "end": 4.6, "text": "hi you late"}]  # "late": the nearest turn's


@pytest.mark.slow
@pytest.mark.parametrize("asr_run", ["asr_demo_run", "whisper_demo_run"])  # a CTC model, a Whisper one
def test_diarize_py_with_an_asr_model_says_who_said_what(demo_run, asr_run, request, tmp_path):
    run_dir, _ = demo_run
    asr_model = request.getfixturevalue(asr_run)[0] / "model"
    wav = sorted(_corpus().glob("test/*.wav"))[0]
    done = run_cli("diarize.py", f"model_dir={run_dir / 'model'}", f"audio={wav}", f"asr_model_dir={asr_model}",
                   f"output_dir={tmp_path}", "hw=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{wav.stem}.speakers.json").read_text())
    assert result["turns"] == [list(t) for t in read_turns(str(tmp_path / f"{wav.stem}.rttm"), str(wav))]
    assert result["utterances"]  # the ASR model spells something, said by someone (or UNKNOWN)
    assert {u["speaker"] for u in result["utterances"]} <= {t[2] for t in result["turns"]} | {"UNKNOWN"}
    srt = (tmp_path / f"{wav.stem}.speakers.srt").read_text()
    text = (tmp_path / f"{wav.stem}.speakers.txt").read_text()
    assert len(result["utterances"]) == srt.count(" --> ") == len(text.splitlines())


# --------------------------------------------------------------------------------------- bad references
@pytest.mark.slow
def test_bad_references_are_dropped_naming_file_and_reason(tmp_path):
    data = tmp_path / "data"
    rows = {"train": [], "test": []}
    cases = {  # name: (RTTM turns, RTTM's recording name)
        "ok1": ([(0.1, 0.9, "a"), (1.0, 1.6, "b")], "ok1"), "ok2": ([(0.1, 1.2, "b"), (1.3, 1.5, "a")], "ok2"),
        "mismatch": ([(0.1, 0.9, "a")], "another_file"), "past": ([(0.1, 30.0, "a")], "past"),
        "twice": ([(0.1, 1.0, "a"), (0.5, 1.2, "a")], "twice"),
        "crowd": ([(0.1, 0.3, "a"), (0.3, 0.6, "b"), (0.6, 0.9, "c"), (0.9, 1.2, "d")], "crowd"),
    }
    for split, names in (("train", list(cases) + ["gone"]), ("test", ["ok1", "ok2"])):
        (data / split).mkdir(parents=True)
        for name in names:
            speak("we talk about the weather today", data / split / f"{name}.wav")
            if name != "gone":
                write_rttm(*cases[name], str(data / split / f"{name}.rttm"))
            rows[split].append((f"{name}.wav", f"{name}.rttm"))
        write_metadata(data / split, rows[split], text_column="rttm")
    run_dir = tmp_path / "run"
    train.run(compose("train", ["task=diarization", "dataset=audiofolder", f"dataset.path={data}",
                                   "dataset.filters.max_duration_s=null", "model=tiny", *TINY, "trainer.max_steps=1",
                                   "trainer.batch_size=2", "trainer.progress_bar=false", f"run_dir={run_dir}"]))
    report = [json.loads(line) for line in (run_dir / "drop_report.jsonl").read_text().splitlines()]
    assert sorted((Path(r["file"]).stem, r["reason"]) for r in report) == [
        ("crowd", "too_many_speakers"), ("gone", "missing_rttm"), ("mismatch", "rttm_mismatch"),
        ("past", "turn_past_end"), ("twice", "overlapping_turns")]
    assert "another_file" in next(r["detail"] for r in report if r["reason"] == "rttm_mismatch")


# --------------------------------------------------------------------------------- the recipe's Hub data
def make_callhome(root):
    """talkbank/callhome as served in parquet: config `spa`, one split `data`, the turns as three list columns."""
    features = Features({"audio": Audio(sampling_rate=8000), "timestamps_start": ListOf(Value("float32")),
                         "timestamps_end": ListOf(Value("float32")), "speakers": ListOf(Value("string"))})
    rows = {k: [] for k in features}
    import io

    from support.hub_fixtures import _speech

    for i in range(5):
        a, b = _speech("hola buenos días", "es", 8000), _speech("muy bien gracias", "es+f3", 8000)
        audio = np.concatenate([a, np.zeros(2000, np.float32), b])  # telephone audio: 8 kHz
        buf = io.BytesIO()
        sf.write(buf, audio, 8000, format="WAV")
        rows["audio"].append({"bytes": buf.getvalue(), "path": f"call{i}.wav"})
        rows["timestamps_start"].append([0.0, (len(a) + 2000) / 8000])
        rows["timestamps_end"].append([len(a) / 8000, len(audio) / 8000])
        rows["speakers"].append(["A", "B"])
    (root / "spa").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(root / "spa" / "data-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: spa\n  data_files:\n  - split: data\n    path: spa/*.parquet\n---\n")
    return root


@pytest.mark.slow
def test_callhome_recipe_reads_the_hub_layout_and_trains(tmp_path):
    root = make_callhome(tmp_path / "callhome")
    cfg = compose("train", ["task=diarization", "dataset=callhome_es", f"dataset.path={root}", "model=tiny", *TINY,
                            "trainer.max_steps=1", "trainer.batch_size=2", "trainer.progress_bar=false",
                            f"run_dir={tmp_path / 'run'}"])
    assert (cfg.dataset.path, cfg.dataset.config_name) == (str(root), "spa")
    train.run(cfg)
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1]["eval_recordings"] == 1  # 5 recordings carved 80/20
    assert compose("train", ["dataset=callhome_es", "run_dir=/x"]).dataset.path == "talkbank/callhome"


@pytest.mark.slow
def test_inspect_data_counts_recordings_by_speakers(tmp_path):
    from speechkit.commands import inspect_data

    summary = inspect_data.run(compose("inspect", ["task=diarization", "dataset=demo_diarization",
                                                 "dataset.demo.num_train=12", "dataset.demo.num_test=3",
                                                 f"run_dir={tmp_path}"]))
    assert summary["splits"]["train"]["clips"] == 12 and summary["splits"]["test"]["clips"] == 3
    # Counted here from the corpus's own RTTM files (the speaker name is an RTTM line's 8th field)
    from collections import Counter

    from omegaconf import OmegaConf

    from speechkit.data.demo_corpus import corpus_dir

    cfg = OmegaConf.to_object(compose("inspect", ["task=diarization", "dataset=demo_diarization",
                                                  "dataset.demo.num_train=12", "dataset.demo.num_test=3",
                                                  f"run_dir={tmp_path}"]))
    root = Path(corpus_dir(cfg.dataset))
    counted = Counter((f"{len({line.split()[7] for line in rttm.read_text().splitlines() if line.strip()})} speakers",
                       split) for split in ("train", "test") for rttm in (root / split).glob("*.rttm"))
    with open(tmp_path / "labels.csv") as f:
        listed = {(row["label"], split): int(row[split]) for row in csv.DictReader(f) for split in ("train", "test")}
    assert {k: v for k, v in listed.items() if v} == dict(counted)
    assert sum(v for (_, split), v in counted.items() if split == "train") == 12
    assert {label for label, _ in counted} == {"2 speakers", "3 speakers"}  # the demo's conversations: 2 or 3


@pytest.mark.slow
def test_a_diarizer_exports_through_the_parity_gate_and_evaluates_the_same(demo_run, tmp_path):
    """export.py on a diarizer (per-frame speaker logits): scored by DER on the run's eval split and kept;
    evaluate.py inference.runtime=onnx then scores what PyTorch scores."""
    run_dir = tmp_path / "run"
    shutil.copytree(demo_run[0], run_dir)
    done = run_cli("export.py", f"model_dir={run_dir / 'model'}")
    assert done.returncode == 0, done.stderr[-3000:]
    parity = json.loads((run_dir / "model" / "onnx" / "parity.json").read_text())["model.onnx"]
    assert parity["passed"] and parity["metric"] == "DER" and parity["max_logit_difference"] < 1e-4
    assert parity["exported"]["eval_der"] == parity["pytorch"]["eval_der"]

    scored = {runtime: evaluate.run(compose("evaluate", [
        f"model_dir={run_dir / 'model'}", "dataset=demo_diarization", "dataset.demo.num_train=12",
        "dataset.demo.num_test=3", "split=test", "hw=cpu", f"inference.runtime={runtime}",
        f"run_dir={tmp_path / runtime}"])).metrics["eval_der"] for runtime in ("torch", "onnx")}
    assert scored["onnx"] == scored["torch"] == parity["pytorch"]["eval_der"]


@pytest.mark.slow
def test_diarize_py_with_vad_keeps_turns_inside_speech(demo_run, tmp_path):
    """vad=true: a demo conversation with 8 s of silence put in its middle; no turn of the RTTM falls in it, and
    every turn lies inside the speech the detector found (a tiny model's false alarms in silence are cut: without
    the detector, this model gives one turn across the whole recording)."""
    from pyannote.database.util import load_rttm

    from speechkit.data.audio import decode
    from speechkit.vad import SpeechDetector

    run_dir, _ = demo_run
    audio = decode(str(sorted(_corpus().glob("test/*.wav"))[0]), 16000)
    half = audio.size // 2
    pause = (half / 16000, half / 16000 + 8.0)
    path = tmp_path / "paused.wav"
    sf.write(path, np.concatenate([audio[:half], np.zeros(8 * 16000, np.float32), audio[half:]]), 16000)
    done = run_cli("diarize.py", f"model_dir={run_dir / 'model'}", f"audio={path}", f"output_dir={tmp_path}",
                   "hw=cpu", "vad=true", "progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    turns = [(s.start, s.end) for s, _ in load_rttm(str(tmp_path / "paused.rttm"))["paused"].itertracks()]
    regions = SpeechDetector().speech(str(path), 1e9).regions
    assert turns and regions
    for start, end in turns:
        assert end <= pause[0] + 0.5 or start >= pause[1] - 0.5, (start, end)  # the margin around speech
        inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in regions)  # regions that touch: one turn
        assert inside == pytest.approx(end - start, abs=2e-3), (start, end)
