"""Audio classification end to end on real audio (espeak-ng): train a few steps, ship model/, reload it with the
stock pipeline, evaluate; the AudioSet recipe's Hub path on a local copy; refusals that name the key or file."""

import csv
import shutil
import re
import json

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from support.browser import check_report
from conftest import TINY, compose, run_cli, speak, write_metadata
from support.hub_fixtures import AUDIOSET_ROWS, make_ast_checkpoint, make_audioset
from speechkit.commands import train
from speechkit.data.audio import decode

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)

WORDS = ["dataset.demo.words=[up,down,stop]", "dataset.demo.num_train=24", "dataset.demo.num_test=6"]
FAST = ["trainer.batch_size=8", "trainer.eval_batch_size=4", "trainer.warmup_steps=1", "trainer.logging_steps=1",
        "trainer.progress_bar=false"]
AST_TINY = ["model.architecture.hidden_size=32", "model.architecture.num_hidden_layers=1",
            "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=64",
            "model.architecture.num_mel_bins=32", "model.architecture.max_length=64"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def commands_run(tmp_path_factory):
    """`python train.py experiment=demo_commands ...` for a few steps, as a user would type it."""
    run_dir = tmp_path_factory.mktemp("commands_run")
    done = run_cli("train.py", "experiment=demo_commands", *WORDS, *TINY, *FAST, "trainer.max_steps=3",
                   f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_commands_run_ships_a_classifier_with_its_labels_and_reports(commands_run):
    run_dir, done = commands_run
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    assert config["id2label"] == {"0": "down", "1": "stop", "2": "up"} and config["label2id"]["up"] == 2
    assert config["problem_type"] == "single_label_classification"
    assert (run_dir / "model" / "preprocessor_config.json").exists()
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and all(0 <= m["eval_accuracy"] <= 1 and "eval_macro_f1" in m and m["eval_clips"] == 6
                         for m in evals)
    assert "Final eval on 'test' (6 clips): accuracy" in done.stdout
    per_class = read_csv(run_dir / "per_class.csv")
    assert [r["label"] for r in per_class] == ["down", "stop", "up"] and sum(int(r["support"]) for r in per_class) == 6
    confusion = list(csv.reader(open(run_dir / "confusion.csv")))
    assert confusion[0][1:] == ["down", "stop", "up"] and sum(int(c) for row in confusion[1:] for c in row[1:]) == 6
    import matplotlib.image

    assert matplotlib.image.imread(run_dir / "confusion.png").shape[0] > 100
    predictions = read_csv(run_dir / "predictions.csv")
    assert len(predictions) == 6 and set(predictions[0]) == {"id", "reference", "prediction", "score", "correct"}


def test_evaluate_scores_the_classifier_and_the_stock_pipeline_agrees(commands_run, tmp_path):
    run_dir, _ = commands_run
    done = run_cli("evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_commands", *WORDS, "split=test",
                   f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo_commands/test: accuracy" in done.stdout and "scored 6 clips, dropped 0" in done.stdout
    assert "precision" in done.stdout  # the per-class table
    predictions = read_csv(tmp_path / "predictions.csv")
    assert (tmp_path / "confusion.png").exists() and (tmp_path / "per_class.csv").exists()
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Per class</h2>" in page and "<h2>Confusion matrix</h2>" in page and "data:image/png;base64," in page
    wrong = sum(not int(r["correct"]) for r in predictions)
    assert f"Clips the top label got wrong ({wrong})" in page
    # each wrong clip playable (the right ones are not copied), in a real browser from a copy of the run dir
    assert len(list((tmp_path / "clips").glob("*.flac"))) == wrong == page.count("<audio ")
    assert wrong > 0  # three steps from random init
    seen = check_report(tmp_path, tmp_path / "browser")
    assert seen["players"] == wrong and seen["tables"][0]["rows"] == wrong

    from transformers import pipeline

    classify = pipeline("audio-classification", model=str(run_dir / "model"))
    for row in predictions:
        top = classify(row["id"], top_k=1)[0]
        assert top["label"] == row["prediction"] and abs(top["score"] - float(row["score"])) < 1e-3, row


@pytest.fixture(scope="module")
def multi_label_folder(tmp_path_factory):
    """An audiofolder whose label cell holds several labels (";") and one clip too short for any model."""
    root = tmp_path_factory.mktemp("multi")
    rows = {"train": [], "test": []}
    for split, count in (("train", 10), ("test", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            word, pitch = ["up", "down"][i % 2], ["low", "high"][(i // 2) % 2]
            speak(word, root / split / f"{i}.wav", voice="en-us+f2" if pitch == "high" else "en-us")
            rows[split].append((f"{i}.wav", f"{word};{pitch}"))
    sf.write(root / "train" / "blip.wav", np.full(100, 0.3, np.float32), 16000)  # 6 ms: shorter than any model's input
    rows["train"].append(("blip.wav", "up;low"))
    for split, items in rows.items():
        write_metadata(root / split, items, text_column="tags")
    return root


def test_ast_multi_label_trains_ships_and_the_pipeline_uses_sigmoid(multi_label_folder, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = compose("train", ["task=audio_classification", "task.multi_label=true", "dataset=audiofolder",
                            f"dataset.path={multi_label_folder}", "dataset.columns.label=tags", "model=ast_tiny",
                            *AST_TINY, *FAST, "trainer.max_steps=2", "hw=cpu", f"run_dir={run_dir}"])
    objective = train.run(cfg)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if m["kind"] == "eval"][-1]
    assert 0 <= final["eval_map"] <= 1 and objective == pytest.approx(1 - final["eval_map"])
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 4
    drops = [json.loads(x) for x in (run_dir / "drop_report.jsonl").read_text().splitlines()]
    assert [(d["file"].endswith("blip.wav"), d["reason"]) for d in drops] == [(True, "too_short")]
    assert "receptive field" in drops[0]["detail"]

    from transformers import pipeline

    classify = pipeline("audio-classification", model=str(run_dir / "model"))
    scores = classify(str(multi_label_folder / "test" / "0.wav"), top_k=4)
    assert len(scores) == 4 and sum(s["score"] for s in scores) != pytest.approx(1.0)  # sigmoid: independent labels
    ours = next(r for r in read_csv(run_dir / "predictions.csv") if r["id"].endswith("test/0.wav"))
    assert scores[0]["label"] == ours["prediction"]

    # Exported (AST's filter bank is a fixed window: only the batch axis is dynamic), scored by mAP, and served with
    # the sigmoid the pipeline uses.
    from speechkit.commands import export
    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    figures = export.run(compose("export", [f"model_dir={run_dir / 'model'}"]))
    assert figures["passed"] and figures["metric"] == "mAP" and figures["max_logit_difference"] < 1e-4
    monkeypatch.setenv("SPEECHKIT_RUNTIME", "onnx")
    served = inference.predict_fn({"array": decode(str(multi_label_folder / "test" / "0.wav"), 16000),
                                   "sampling_rate": 16000}, inference.model_fn(str(run_dir / "model")))
    assert [x["label"] for x in served["labels"]] == [x["label"] for x in scores]
    assert [x["score"] for x in served["labels"]] == pytest.approx([x["score"] for x in scores], abs=1e-4)


def test_audioset_recipe_composes_as_published():
    cfg = compose("train", ["experiment=rocm_audioset_ast", "run_dir=/x"])
    assert cfg.model.name_or_path == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert (cfg.dataset.path, cfg.dataset.config_name, cfg.dataset.columns.label) == (
        "agkphysics/AudioSet", "balanced", "human_labels")
    assert cfg.task.name == "audio_classification" and cfg.task.multi_label and cfg.task.label_set == "checkpoint"
    assert cfg.model.sampling_rate == 16000 and not cfg.model.freeze_feature_encoder


@pytest.fixture(scope="module")
def audioset_copy(tmp_path_factory):
    return make_audioset(tmp_path_factory.mktemp("audioset")), make_ast_checkpoint(tmp_path_factory.mktemp("ast"))


def test_audioset_checkpoint_evaluates_on_the_hub_layout(audioset_copy, tmp_path):
    """`evaluate.py` on an AST checkpoint in the Hub's layout and AudioSet in the Hub's parquet layout: labels the
    checkpoint lacks are reported, clips with no known label left out, mAP printed."""
    data, checkpoint = audioset_copy
    done = run_cli("evaluate.py", f"model_dir={checkpoint}", "dataset=audioset", f"dataset.path={data}", "split=test",
                   f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "audioset/test: mAP" in done.stdout and "scored 3 clips, dropped 1 (unknown_label=1)" in done.stdout
    drops = [json.loads(x) for x in (tmp_path / "drop_report.jsonl").read_text().splitlines()]
    assert [d["detail"] for d in drops] == ["Gush"]


def test_audioset_recipe_fine_tunes_keeping_the_checkpoints_labels(audioset_copy, tmp_path):
    data, checkpoint = audioset_copy
    cfg = compose("train", ["experiment=rocm_audioset_ast", f"model.name_or_path={checkpoint}", f"dataset.path={data}",
                            "hw=cpu", "hw.mixed_precision=no", *FAST, "trainer.max_steps=2", f"run_dir={tmp_path}"])
    train.run(cfg)
    shipped = json.loads((tmp_path / "model" / "config.json").read_text())
    assert shipped["id2label"] == {"0": "Speech", "1": "Music", "2": "Dog"}  # the checkpoint's, not the data's
    assert json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())["num_mel_bins"] == 32
    assert len(AUDIOSET_ROWS["test"]) - 1 == [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text()
                                              .splitlines() if '"eval"' in x][-1]["eval_clips"]


def test_audioset_recipe_streams_its_training_split(audioset_copy, tmp_path):
    """dataset.streaming with a classifier: labels checked against the checkpoint's as rows stream, clips cut to AST's
    window as they come."""
    data, checkpoint = audioset_copy
    cfg = compose("train", ["experiment=rocm_audioset_ast", f"model.name_or_path={checkpoint}", f"dataset.path={data}",
                            "hw=cpu", "hw.mixed_precision=no", *FAST, "trainer.max_steps=3", "dataset.streaming=true",
                            "dataset.shuffle_buffer=4", f"run_dir={tmp_path}"])
    train.run(cfg)
    shipped = json.loads((tmp_path / "model" / "config.json").read_text())
    assert shipped["id2label"] == {"0": "Speech", "1": "Music", "2": "Dog"}
    state = json.loads(next((tmp_path / "checkpoints").glob("step-3/trainer_state.json")).read_text())
    assert state["data"]["positions"][0][0] >= 1 and state["data"]["drops"] == []  # every training clip usable
    report = [json.loads(x) for x in (tmp_path / "drop_report.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in report] == ["unknown_label"]  # the evaluation clip of a class the checkpoint lacks


def _labelled_folder(root, train, test):
    for split, items in (("train", train), ("test", test)):
        for i, label in enumerate(items):
            (root / split).mkdir(parents=True, exist_ok=True)
            speak(label, root / split / f"{i}.wav")
        write_metadata(root / split, [(f"{i}.wav", label) for i, label in enumerate(items)], text_column="label")
    return root


def test_a_label_only_the_eval_split_has_is_refused_naming_it(tmp_path):
    folder = _labelled_folder(tmp_path / "data", ["up", "down", "up", "down"], ["up", "left"])
    done = run_cli("train.py", "task=audio_classification", "dataset=audiofolder", f"dataset.path={folder}",
                   *TINY, *FAST, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "dataset.columns.label" in lines[-1] and "'left'" in lines[-1]


def test_a_missing_label_column_is_refused_naming_the_key_and_file(tmp_path):
    folder = _labelled_folder(tmp_path / "data", ["up", "down"], ["up"])
    done = run_cli("train.py", "task=audio_classification", "dataset=audiofolder", f"dataset.path={folder}",
                   "dataset.columns.label=category", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "dataset.columns.label" in last and "metadata.csv" in last and "'category'" in last


def test_demo_commands_composes_with_held_out_voices():
    cfg = OmegaConf.to_object(compose("train", ["experiment=demo_commands", "run_dir=/x"]))
    assert cfg.task.name == "audio_classification" and cfg.model.name == "tiny" and cfg.dataset.name == "demo_commands"
    assert set(cfg.dataset.demo.test_voices) <= set(cfg.dataset.demo.voices)
    assert len(cfg.dataset.demo.words) == 12 and all(isinstance(w, str) for w in cfg.dataset.demo.words)


def test_sagemaker_metric_regexes_match_a_classifiers_log_lines(commands_run):
    """The eval log line is a contract: SageMaker's metric definitions for this task read the values metrics.jsonl
    has, from the very lines this run printed."""
    from speechkit.sagemaker.launch import metric_definitions

    run_dir, done = commands_run
    definitions = dict(metric_definitions(compose("train", ["experiment=demo_commands", "run_dir=/x"])))
    assert {"eval_accuracy", "eval_macro_f1", "eval_loss"} <= set(definitions) and "eval_wer" not in definitions
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    lines = (done.stdout + done.stderr).splitlines()
    for name in ("eval_loss", "eval_accuracy", "eval_macro_f1"):
        values = [float(m.group(1)) for line in lines if (m := re.search(definitions[name], line))]
        assert values == pytest.approx([e[name] for e in evals], abs=1e-4), name
    multi = dict(metric_definitions(compose("train", ["experiment=rocm_audioset_ast", "run_dir=/x"])))
    assert "eval_map" in multi


def test_two_processes_train_a_classifier_and_score_every_clip_once(tmp_path):
    """DDP (`accelerate launch`, two CPU processes) for the classification task: every test clip scored once, the
    artifacts written once, and the shipped model's final accuracy equal to a one-process evaluate.py of it."""
    from conftest import accelerate_launch

    run_dir = tmp_path / "run"
    done = accelerate_launch("experiment=demo_commands", *WORDS, *TINY, *FAST, "trainer.batch_size=4",
                             "trainer.max_steps=3", "trainer.eval_steps=3", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-5000:]
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and all(m["eval_clips"] == 6 and m["eval_gathered"] >= 6 for m in evals)
    assert done.stdout.count("Final eval on 'test'") == 1 and len(read_csv(run_dir / "predictions.csv")) == 6
    final = float(re.search(r"Final eval on 'test' \(6 clips\): accuracy ([0-9.]+)", done.stdout).group(1))
    single = run_cli("evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_commands", *WORDS, "hw=cpu",
                     f"hydra.run.dir={tmp_path / 'eval'}")
    assert f"accuracy {final:.4f}" in single.stdout, single.stdout[-2000:]


def test_a_resumed_classifier_run_ends_with_the_same_weights(tmp_path):
    """Exact resume for the classification task, random crops included: AST-tiny's window (0.64 s) is shorter than
    the spoken words, so every training clip is cut at a random offset drawn from the checkpointed RNG."""
    import shutil

    import torch
    from safetensors.torch import load_file

    def cfg(run_dir, *extra):
        return compose("train", ["experiment=demo_commands", *WORDS, "model=ast_tiny", *AST_TINY, *FAST,
                                 "trainer.max_steps=4", "trainer.save_steps=2", "trainer.eval_steps=2",
                                 "trainer.save_total_limit=null", f"run_dir={run_dir}", *extra])

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.run(cfg(full))
    shutil.copytree(full, stopped)
    for later in ("step-4", "best"):
        shutil.rmtree(stopped / "checkpoints" / later)
    shutil.rmtree(stopped / "model")
    train.run(cfg(stopped, "trainer.resume=auto"))
    a, b = (load_file(d / "checkpoints" / "step-4" / "model.safetensors") for d in (full, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(full / "checkpoints" / "step-2" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)


def test_an_ast_classifier_run_budgets_its_batches_by_the_window_and_says_so(tmp_path, caplog):
    """AST is fed its whole window (here 1.28 s) whatever the clip: 2.56 s of trainer.batch_duration_s is two
    clips a batch, two windows fed, however short the spoken words; the run's log says so, as a Whisper's does."""
    run_dir = tmp_path / "run"
    cfg = compose("train", ["experiment=demo_commands", *WORDS, "model=ast_tiny", *AST_TINY,
                            "model.architecture.max_length=128", *FAST, "trainer.batch_duration_s=2.56",
                            "trainer.max_steps=3", "trainer.eval_steps=3", "augment=none", f"run_dir={run_dir}"])
    with caplog.at_level("INFO"):
        train.run(cfg)
    assert any(r.getMessage().startswith("Audio Spectrogram Transformer pads every clip to its 1.28 s input window")
               for r in caplog.records)
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:  # one batch a logging window: the samples fed, padding counted, are two windows
        assert m["audio_s"] / (1 - m["padding"]) == pytest.approx(2.56, rel=1e-6), m
        assert m["audio_s"] < 2.56 * 0.9  # the words are shorter than the window: the rest is padding


def test_serve_answers_a_classifier_with_its_top_labels(commands_run):
    """serve.py on a classifier's model/: the handler picks the audio-classification pipeline and answers the top
    labels with their scores, the first the one speechkit's evaluation predicted for that clip."""
    from conftest import serve_and_post_wav

    run_dir, _ = commands_run
    row = read_csv(run_dir / "predictions.csv")[0]
    answer = serve_and_post_wav(run_dir / "model", row["id"])
    assert [x["label"] for x in answer["labels"]][0] == row["prediction"] and len(answer["labels"]) == 3
    assert answer["labels"][0]["score"] == pytest.approx(float(row["score"]), abs=1e-3)


@pytest.mark.slow
def test_a_classifier_exports_through_the_parity_gate_and_serves_the_same_labels(commands_run, tmp_path, monkeypatch):
    """export.py on a classifier: scored by accuracy (and macro-F1) on the run's own eval split, kept, and the
    handler's ONNX path (softmax in numpy) answers the labels and scores the PyTorch pipeline answers."""
    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    run_dir = tmp_path / "run"
    shutil.copytree(commands_run[0], run_dir)
    done = run_cli("export.py", f"model_dir={run_dir / 'model'}")
    assert done.returncode == 0, done.stderr[-3000:]
    parity = json.loads((run_dir / "model" / "onnx" / "parity.json").read_text())["model.onnx"]
    assert parity["passed"] and parity["metric"] == "accuracy" and parity["changed_predictions"] == 0
    assert parity["exported"] == parity["pytorch"] and "eval_accuracy" in parity["pytorch"]
    assert "| accuracy | " in done.stdout

    row = read_csv(run_dir / "predictions.csv")[0]
    clip = {"array": decode(row["id"], 16000), "sampling_rate": 16000}
    answers = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("SPEECHKIT_RUNTIME", runtime)
        answers[runtime] = inference.predict_fn(clip, inference.model_fn(str(run_dir / "model")))
    assert [x["label"] for x in answers["onnx"]["labels"]] == [x["label"] for x in answers["torch"]["labels"]]
    for a, b in zip(answers["onnx"]["labels"], answers["torch"]["labels"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
