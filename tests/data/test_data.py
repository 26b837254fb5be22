"""Data loading on real audio files: the audiofolder layout, bad input of every kind, carving, Hub-style data."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, Dataset

from conftest import compose, speak, write_metadata, write_tone
from speechkit import data
from speechkit.config import ConfigError
from speechkit.data.audio import decode
from speechkit.kinds.ctc.vocab import build_vocab, drop_unspellable

GOOD = ["the cat sees a dog", "my old boat is red", "a bird in the park", "one tree by the sea"]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """An audiofolder with every kind of bad row a real collection has, beside good speech."""
    root = tmp_path_factory.mktemp("messy")
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    rows = []
    for i, text in enumerate(GOOD):
        speak(text, train / f"good{i}.wav", voice=["en-us", "en-gb"][i % 2])
        rows.append((f"good{i}.wav", text.upper() + "."))
    (train / "corrupt.wav").write_bytes(b"RIFF....this is not audio at all" * 10)
    rows.append(("corrupt.wav", "broken file"))
    rows.append(("missing.wav", "no such file"))
    speech, rate = sf.read(speak("a stereo clip", train / "tmp.wav"))
    (train / "tmp.wav").unlink()
    hi = np.interp(np.arange(0, len(speech), rate / 44100), np.arange(len(speech)), speech)
    sf.write(train / "stereo44k.wav", np.stack([hi, 0.5 * hi], axis=1), 44100)
    rows.append(("stereo44k.wav", "a stereo clip"))
    sf.write(train / "silent.wav", np.zeros(16000, np.float32), 16000)
    rows.append(("silent.wav", "nothing to hear"))
    speak("some words", train / "untranscribed.wav")
    rows.append(("untranscribed.wav", "?!"))
    sf.write(train / "nosamples.wav", np.zeros(0, np.float32), 16000)
    rows.append(("nosamples.wav", "zero samples"))
    write_tone(train / "long.wav", 4.0, 16000)
    rows.append(("long.wav", "a long tone"))
    speak("zebra", train / "zebra.wav")
    rows.append(("zebra.wav", "zebra"))
    write_metadata(train, rows)
    test_rows = []
    for i, text in enumerate(["the dog sees a cat", "my red boat"]):
        speak(text, test / f"t{i}.wav")
        test_rows.append((f"t{i}.wav", text))
    write_metadata(test, test_rows)
    return root


def messy_cfg(folder, *extra):
    return compose("train", ["dataset=audiofolder", f"dataset.path={folder}", "dataset.filters.max_duration_s=3.5",
                             "run_dir=/tmp/unused", *extra]).dataset


def test_every_bad_row_is_dropped_with_its_reason(messy_folder):
    report = data.DropReport()
    splits = data.load_splits(messy_cfg(messy_folder), {"train": True, "test": False}, 16000, report)
    assert len(splits["test"]) == 2
    reasons = {Path(r["file"]).name: r["reason"] for r in report.rows}
    assert reasons == {
        "corrupt.wav": "unreadable_audio",
        "missing.wav": "missing_file",
        "silent.wav": "silent",
        "untranscribed.wav": "empty_transcript",
        "nosamples.wav": "empty_audio",
        "long.wav": "too_long",
    }
    assert report.counts("train") == {"unreadable_audio": 1, "missing_file": 1, "silent": 1, "empty_transcript": 1,
                                      "empty_audio": 1, "too_long": 1}
    kept = data.texts(splits["train"])
    assert sorted(kept) == sorted(GOOD + ["a stereo clip", "zebra"])  # normalized: lowercase, no full stop
    assert "train:" in report.summary() and "silent=1" in report.summary()


def test_stereo_44k_is_decoded_to_mono_at_the_model_rate(messy_folder):
    report = data.DropReport()
    rows = data.load_splits(messy_cfg(messy_folder), {"train": True}, 16000, report)["train"]
    ds = data.SpeechDataset(rows, 16000)
    i = data.texts(rows).index("a stereo clip")
    item = ds[i]
    info = sf.info(str(messy_folder / "train" / "stereo44k.wav"))
    assert item["input_values"].ndim == 1 and item["input_values"].dtype == np.float32
    assert abs(len(item["input_values"]) - info.duration * 16000) < 0.01 * 16000
    assert ds.lengths[i] == len(item["input_values"])


def test_duration_filters_spare_the_eval_split(tmp_path):
    write_tone(tmp_path / "long.wav", 4.0, 16000)
    write_metadata(tmp_path, [("long.wav", "a long tone")])
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={tmp_path}", "dataset.filters.max_duration_s=2",
                            "run_dir=/x"]).dataset
    assert len(data.load_splits(cfg, {"train": False}, 16000, data.DropReport())["train"]) == 1
    with pytest.raises(ConfigError, match="every example was dropped"):
        data.load_splits(cfg, {"train": True}, 16000, data.DropReport())


def test_chars_outside_a_reused_vocab_are_dropped_and_named(messy_folder):
    report = data.DropReport()
    rows = data.load_splits(messy_cfg(messy_folder), {"train": True}, 16000, report)["train"]
    vocab = build_vocab(GOOD + ["a stereo clip"], compose("train", ["run_dir=/x"]).task.vocab)
    assert "z" not in vocab
    kept = drop_unspellable(rows, vocab, "train", report)
    assert "zebra" not in data.texts(kept) and len(kept) == len(rows) - 1
    row = [r for r in report.rows if r["reason"] == "chars_outside_vocab"][0]
    assert row["file"].endswith("zebra.wav") and "z" in row["detail"]


def test_custom_column_names(tmp_path):
    speak("hello there", tmp_path / "a.wav")
    write_metadata(tmp_path, [("a.wav", "Hello there")], file_column="path", text_column="sentence")
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={tmp_path}", "dataset.columns.file=path",
                            "dataset.columns.text=sentence", "run_dir=/x"]).dataset
    rows = data.load_splits(cfg, {"train": True}, 16000, data.DropReport())["train"]
    assert data.texts(rows) == ["hello there"]
    bad = compose("train", ["dataset=audiofolder", f"dataset.path={tmp_path}", "run_dir=/x"]).dataset
    with pytest.raises(ConfigError, match="no column 'file_name'"):
        data.load_splits(bad, {"train": True}, 16000, data.DropReport())


def test_a_metadata_csv_saved_by_a_spreadsheet_is_read_as_meant(tmp_path):
    """Excel's "CSV UTF-8": a byte-order mark before the first column's name, CRLF line ends, quoted fields."""
    speak("hello there", tmp_path / "a b.wav")
    speak("good night", tmp_path / "c.wav")
    (tmp_path / "metadata.csv").write_bytes(
        b"\xef\xbb\xbffile_name,transcription\r\n\"a b.wav\",\"Hello, there\"\r\nc.wav,Good night\r\n")
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={tmp_path}", "run_dir=/x"]).dataset
    rows = data.load_splits(cfg, {"train": True}, 16000, data.DropReport())["train"]
    assert data.texts(rows) == ["hello there", "good night"]


def test_missing_split_and_folder_are_named(messy_folder, tmp_path):
    with pytest.raises(ConfigError, match="split 'validation' not found"):
        data.load_splits(messy_cfg(messy_folder), {"validation": False}, 16000, data.DropReport())
    with pytest.raises(ConfigError, match="no metadata.csv"):
        data.load_splits(messy_cfg(tmp_path), {"train": True}, 16000, data.DropReport())


def test_carving_is_deterministic_and_disjoint(tmp_path):
    rows = []
    for i in range(10):
        write_tone(tmp_path / f"{i}.wav", 0.5 + i / 10, 16000)
        rows.append((f"{i}.wav", f"clip {'abcdefghij'[i]}"))
    write_metadata(tmp_path, rows)
    over = ["dataset=audiofolder", f"dataset.path={tmp_path}", "dataset.carve.from_split=train",
            "dataset.carve.test_ratio=0.2", "run_dir=/x"]
    a = data.load_source(compose("train", over).dataset)
    b = data.load_source(compose("train", over).dataset)
    assert (len(a["train"]), len(a["test"])) == (8, 2)
    assert list(a["test"]["text"]) == list(b["test"]["text"])
    assert not set(a["test"]["text"]) & set(a["train"]["text"])
    c = data.load_source(compose("train", over + ["dataset.carve.seed=7"]).dataset)
    assert sorted(list(c["train"]["text"]) + list(c["test"]["text"])) == sorted(r[1] for r in rows)


def test_hub_source_reads_parquet_with_embedded_audio_bytes(tmp_path):
    """The `hub` source through datasets.load_dataset on a local parquet data set, audio stored as bytes."""
    clips = []
    for i, text in enumerate(["the red car", "a green tree", "the old man"]):
        path = speak(text, tmp_path / f"{i}.wav")
        clips.append({"bytes": path.read_bytes(), "path": f"{i}.wav"})
    ds = Dataset.from_dict({"audio": clips, "sentence": ["The red car!", "A green tree.", "The OLD man"],
                           "speaker": [1, 2, 3]}).cast_column("audio", Audio())
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    for f in tmp_path.glob("*.wav"):
        f.unlink()  # the audio now lives only inside the parquet file
    cfg = compose("train", ["dataset=hub", f"dataset.path={tmp_path / 'data'}", "dataset.columns.text=sentence",
                            "run_dir=/x"]).dataset
    rows = data.load_splits(cfg, {"train": True}, 16000, data.DropReport())["train"]
    assert data.texts(rows) == ["the red car", "a green tree", "the old man"]
    assert data.SpeechDataset(rows, 16000)[0]["input_values"].size > 8000
    bad = compose("train", ["dataset=hub", f"dataset.path={tmp_path / 'data'}", "run_dir=/x"]).dataset
    with pytest.raises(ConfigError, match=r"dataset.columns.text: .* no column 'text'"):
        data.load_splits(bad, {"train": True}, 16000, data.DropReport())


def test_drop_report_file(tmp_path):
    r = data.DropReport()
    r.add("train", 3, "/a/b.wav", "silent", "peak 0")
    r.write(str(tmp_path / "drop_report.jsonl"))
    assert json.loads((tmp_path / "drop_report.jsonl").read_text()) == {
        "split": "train", "row": 3, "file": "/a/b.wav", "reason": "silent", "detail": "peak 0"}


# ------------------------------------------------------------------------------------- decoded-audio cache
def _cache_folder(root: Path, texts=("the cat sees a dog", "my old boat is red")) -> Path:
    for split in ("train", "test"):
        rows = []
        for i, text in enumerate(texts):
            speak(text, (root / split).mkdir(parents=True, exist_ok=True) or root / split / f"{i}.wav")
            rows.append((f"{i}.wav", text))
        write_metadata(root / split, rows)
    return root


def _load(folder, rate=16000, *extra):
    cfg = compose("train", ["dataset=audiofolder", f"dataset.path={folder}", "run_dir=/tmp/unused", *extra]).dataset
    from omegaconf import OmegaConf

    return data.load_splits(OmegaConf.to_object(cfg), {"train": True, "test": False}, rate, data.DropReport())


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    from speechkit.data import checking

    monkeypatch.setattr(checking, "decode", refuse)  # what the checking pass calls


def test_clips_are_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    folder = _cache_folder(tmp_path / "a")
    first = _load(folder)
    train = data.SpeechDataset(first["train"], 16000)
    assert train.cached and train[0]["input_values"].dtype == np.float32
    # the cache holds what decoding gives: int16 for training (within one step of 16-bit), float32 for evaluation
    exact = decode(str(folder / "train" / "0.wav"), 16000)
    assert np.abs(train[0]["input_values"] - exact).max() <= 1 / data.PCM_SCALE
    assert np.array_equal(data.SpeechDataset(first["test"], 16000)[0]["input_values"],
                          decode(str(folder / "test" / "0.wav"), 16000))
    assert first["train"].features[data.PCM].feature.dtype == "int16"
    assert first["test"].features[data.PCM].feature.dtype == "float32"

    _no_decoding(monkeypatch)  # a second run (new objects, same files): nothing is decoded
    again = _load(folder)
    assert np.array_equal(data.SpeechDataset(again["train"], 16000)[1]["input_values"], train[1]["input_values"])


def test_the_cache_is_rebuilt_when_a_file_or_the_rate_changes(tmp_path):
    folder = _cache_folder(tmp_path / "a")
    before = data.SpeechDataset(_load(folder)["train"], 16000)
    # the same metadata.csv, one WAV rewritten with other speech: a different clip, decoded anew
    speak("a completely different and much longer sentence", folder / "train" / "0.wav")
    after = data.SpeechDataset(_load(folder)["train"], 16000)
    assert after.lengths[0] != before.lengths[0] and after.lengths[1] == before.lengths[1]
    assert len(after[0]["input_values"]) == after.lengths[0]
    at_8k = data.SpeechDataset(_load(folder, 8000)["train"], 8000)
    assert abs(at_8k.lengths[1] - before.lengths[1] / 2) <= 2  # decoded at the new rate, not read back


def test_two_sources_never_share_a_cache(tmp_path):
    a = _cache_folder(tmp_path / "a", ("the cat sees a dog", "my old boat is red"))
    b = _cache_folder(tmp_path / "b", ("a bird in the park", "one tree by the sea"))  # same file names
    da, db = (data.SpeechDataset(_load(f)["train"], 16000) for f in (a, b))
    assert data.texts(da.ds) != data.texts(db.ds)
    for i in range(2):
        assert np.array_equal(db[i]["input_values"],
                              np.clip(np.rint(decode(str(b / "train" / f"{i}.wav"), 16000) * data.PCM_SCALE),
                                      -32768, 32767).astype(np.float32) / data.PCM_SCALE)


def test_lazy_decoding_keeps_no_samples(tmp_path):
    folder = _cache_folder(tmp_path / "a")
    rows = _load(folder, 16000, "dataset.cache_audio=false")["train"]
    assert data.PCM not in rows.column_names
    ds = data.SpeechDataset(rows, 16000)
    assert not ds.cached
    assert np.array_equal(ds[0]["input_values"], decode(str(folder / "train" / "0.wav"), 16000))


# ------------------------------------------------------------------------------------------ inspect_data.py
@pytest.mark.slow
def test_inspect_data_prints_and_writes_what_training_would_see(messy_folder, tmp_path):
    from conftest import run_cli

    done = run_cli("inspect_data.py", "dataset=audiofolder", f"dataset.path={messy_folder}",
                   "dataset.filters.max_duration_s=3.5", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # What the folder holds, counted here from the files themselves (soundfile), not by speechkit's loading code.
    kept = {"train": [f"good{i}.wav" for i in range(len(GOOD))] + ["stereo44k.wav", "zebra.wav"],
            "test": ["t0.wav", "t1.wav"]}
    drops = {"train": {"unreadable_audio": 1, "missing_file": 1, "silent": 1, "empty_transcript": 1, "empty_audio": 1,
                       "too_long": 1}, "test": {}}
    for split in ("train", "test"):
        s = summary["splits"][split]
        assert s["clips"] == len(kept[split]) and s["drop_reasons"] == drops[split]
        seconds = sum(sf.info(messy_folder / split / f).duration for f in kept[split])
        assert s["hours"] == pytest.approx(seconds / 3600, rel=1e-3)  # resampled to 16 kHz: within a sample
    train_row = next(line for line in done.stdout.splitlines() if line.startswith("train "))
    assert train_row.split()[1] == "6" and "too_long=1" in train_row and "unreadable_audio=1" in train_row
    with open(tmp_path / "characters.csv") as f:
        rows = {r["character"]: r for r in csv.DictReader(f)}
    assert rows["z"]["train"] == "1" and rows["z"]["test"] == "0"  # "zebra", train only
    assert sorted((Path(r["file"]).name, r["reason"]) for r in map(json.loads, (
        tmp_path / "drop_report.jsonl").read_text().splitlines())) == [
        ("corrupt.wav", "unreadable_audio"), ("long.wav", "too_long"), ("missing.wav", "missing_file"),
        ("nosamples.wav", "empty_audio"), ("silent.wav", "silent"), ("untranscribed.wav", "empty_transcript")]
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "durations.png").shape[:2] == (400, 800)


@pytest.mark.slow
def test_inspect_data_names_characters_a_model_cannot_learn(tmp_path):
    from conftest import run_cli

    root = tmp_path / "data"
    for split, text in (("train", "the cat sees a dog"), ("test", "a quiet fox")):
        speak(text, (root / split).mkdir(parents=True) or root / split / "0.wav")
        write_metadata(root / split, [("0.wav", text)])
    done = run_cli("inspect_data.py", "dataset=audiofolder", f"dataset.path={root}", f"hydra.run.dir={tmp_path / 'i'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 'test' but never in 'train' (a model cannot learn them): f i q u x" in done.stdout


@pytest.mark.slow
def test_inspect_data_counts_labels_for_a_classification_data_set(tmp_path):
    from conftest import run_cli

    root = tmp_path / "data"
    for split, labels in (("train", ["up", "down", "up"]), ("test", ["up", "left"])):
        (root / split).mkdir(parents=True)
        for i, label in enumerate(labels):
            speak(label, root / split / f"{i}.wav")
        write_metadata(root / split, [(f"{i}.wav", label) for i, label in enumerate(labels)], text_column="label")
    done = run_cli("inspect_data.py", "task=audio_classification", "dataset=audiofolder", f"dataset.path={root}",
                   f"hydra.run.dir={tmp_path / 'i'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Labels of 'train' (2; clips each, most frequent first):" in done.stdout and "up:2 down:1" in done.stdout
    assert "in 'test' but never in 'train' (a model cannot learn them): left" in done.stdout
    with open(tmp_path / "i" / "labels.csv") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert (rows["up"]["train"], rows["up"]["test"], rows["left"]["train"]) == ("2", "1", "0")
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert summary["labels_not_in_training"] == {"test": ["left"]} and summary["splits"]["train"]["labels"] == 2
