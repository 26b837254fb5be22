"""The offline demo corpus: real espeak-ng speech, deterministic, cached, held-out sentences unseen in training."""

import os

from conftest import compose
from speechkit import data
from speechkit.data.demo_corpus import corpus_dir, ensure_corpus, plan


def demo_cfg(name="demo_en", *extra, tmp=None):
    over = [f"dataset={name}", "dataset.demo.num_train=12", "dataset.demo.num_test=4", "run_dir=/x", *extra]
    if tmp is not None:
        over.append(f"dataset.demo.cache_dir={tmp}")
    return compose("train", over).dataset


def test_plan_is_deterministic_and_test_sentences_are_unseen():
    cfg = compose("train", ["dataset=demo_en", "run_dir=/x"]).dataset
    a, b = plan(cfg), plan(cfg)
    assert a == b and len(a) == cfg.demo.num_train + cfg.demo.num_test
    train = {s for split, s, *_ in a if split == "train"}
    test = {s for split, s, *_ in a if split == "test"}
    assert len(test) == cfg.demo.num_test and not train & test
    test_words = {w for s in test for w in s.split()}
    train_words = {w for s in train for w in s.split()}
    assert test_words <= train_words  # new sentences, known words
    assert {v for _, _, v, _, _ in a} == set(cfg.demo.voices)  # every voice is used
    assert len({(sp, p) for *_, sp, p in a}) > 3
    other = compose("train", ["dataset=demo_en", "dataset.demo.seed=1", "run_dir=/x"]).dataset
    assert plan(other) != a


def test_corpus_is_generated_once_then_reused(tmp_path):
    cfg = demo_cfg(tmp=tmp_path)
    root = ensure_corpus(cfg)
    assert root == corpus_dir(cfg) and os.path.isfile(os.path.join(root, "COMPLETE"))
    stamp = os.path.getmtime(os.path.join(root, "train", "metadata.csv"))
    assert ensure_corpus(cfg) == root
    assert os.path.getmtime(os.path.join(root, "train", "metadata.csv")) == stamp
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # nothing half-written left
    assert corpus_dir(demo_cfg("demo_en", "dataset.demo.seed=3", tmp=tmp_path)) != root


def test_spanish_twin_reads_back_normalized_like_fleurs(tmp_path):
    cfg = demo_cfg("demo_es", tmp=tmp_path)
    report = data.DropReport()
    splits = data.load_splits(cfg, {"train": True, "test": False}, 16000, report)
    assert report.rows == [] and len(splits["train"]) == 12 and len(splits["test"]) == 4
    texts = data.texts(splits["train"]) + data.texts(splits["test"])
    assert all(t == t.lower() and t.isascii() for t in texts)  # accents stripped by unidecode
    raw = open(os.path.join(corpus_dir(cfg), "train", "metadata.csv"), encoding="utf-8").read()
    assert any(c in raw for c in "áéíóúñ")  # the files keep real spelling (seed 0 draws accented words)
    item = data.SpeechDataset(splits["test"], 16000)[0]
    assert item["input_values"].size > 16000 * 0.5  # real speech, over half a second


def test_two_processes_building_one_corpus_at_once_both_get_it_whole(tmp_path):
    """A parallel sweep's jobs may synthesize the same corpus at the same time: the one that finishes second keeps
    the first's (which the first may already be reading) rather than replacing it under its feet."""
    import subprocess
    import sys

    code = ("import os; from conftest import compose; from speechkit.data.demo_corpus import ensure_corpus; "
            "cfg = compose('train', ['dataset=demo_en', 'dataset.demo.num_train=12', 'dataset.demo.num_test=4', "
            f"'run_dir=/x', 'dataset.demo.cache_dir={tmp_path}']).dataset; root = ensure_corpus(cfg); "
            "print(root, os.stat(root).st_ino)")  # the folder this process was given, as it was then
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=here, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(here)}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    given = {tuple(out.strip().splitlines()[-1].split()) for out, _ in outs}
    assert len(given) == 1  # the same folder, never replaced after one of them had it
    root, inode = given.pop()
    assert os.stat(root).st_ino == int(inode) and os.path.isfile(os.path.join(root, "COMPLETE"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
