"""Whisper (sequence-to-sequence speech recognition) on the same trainer: a small random-init Whisper with a tokenizer
built from the transcripts, and a local copy of a pretrained checkpoint in the Hub's layout; trained, resumed exactly,
under two processes, shipped as a folder the stock pipeline loads and transcribes as speechkit scored it, evaluated,
transcribed long, served; its drops and refusals named."""

import csv
import json
import os
import re
import shutil
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import (SMALL_DEMO, TINY_WHISPER, WHISPER_DEMO, WHISPER_FAST, compose, long_recording, speak,
                      write_metadata)
from support.hub_fixtures import FLEURS_KEPT, make_fleurs, make_whisper_checkpoint
from speechkit.commands import evaluate, train, transcribe
from speechkit.config import ConfigError

pytestmark = pytest.mark.slow

def predictions(run_dir):
    with open(run_dir / "predictions.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def whisper_run(whisper_demo_run):
    return whisper_demo_run


def test_a_scratch_whisper_ships_a_folder_the_stock_pipeline_transcribes_as_speechkit_scored(whisper_run):
    from transformers import AutoModelForSpeechSeq2Seq, GenerationConfig, pipeline

    run_dir, _ = whisper_run
    model_dir = run_dir / "model"
    assert type(AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)).__name__ == "WhisperForConditionalGeneration"
    generation = GenerationConfig.from_pretrained(model_dir)
    assert (generation.language, generation.task, generation.max_length) == ("en", "transcribe", 4 + 12)
    asr = pipeline("automatic-speech-recognition", model=str(model_dir))
    rows = predictions(run_dir)
    assert len(rows) == 6 and any(r["hypothesis"] for r in rows)
    for row in rows:
        assert asr(row["id"])["text"].strip() == row["hypothesis"], row["id"]
    log = (run_dir / "train.log").read_text()
    assert "Whisper pads every clip to its 4 s input window" in log
    assert re.search(r"Data 'demo_en': 24 train / 6 eval utterances, \d+ tokens \(prompt: en, transcribe\)", log)
    card = (model_dir / "README.md").read_text()
    assert "sequence to sequence, Whisper" in card and 'pipeline("automatic-speech-recognition"' in card


def test_the_hallucination_probe_is_reported_everywhere(whisper_run):
    """task.hallucination_probe=2: two silent and two noise clips at every evaluation, the words the model emits on
    them in metrics.jsonl, the log, the curves and report.html."""
    run_dir, _ = whisper_run
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and all({"eval_probe_words", "eval_probe_silence_words", "eval_probe_noise_words"} <= set(e)
                         for e in evals)
    last = evals[-1]
    assert last["eval_probe_words"] == pytest.approx((last["eval_probe_silence_words"] +
                                                      last["eval_probe_noise_words"]) / 2)
    assert "eval_probe_words=" in (run_dir / "train.log").read_text()
    page = (run_dir / "report.html").read_text()
    assert "Hallucination probe:" in page and page.count("<td>silence</td>") == 2 and page.count("<td>noise</td>") == 2


def test_evaluate_and_transcribe_take_a_whisper_model(whisper_run, tmp_path):
    run_dir, _ = whisper_run
    result = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO,
                                               "hw=cpu", f"run_dir={tmp_path / 'eval'}"]))
    assert [p["hypothesis"] for p in result.predictions] == [r["hypothesis"] for r in predictions(run_dir)]

    # a 2-minute recording: windows of the model's 4 s, joined where they overlap, segments timed within it
    clips = [r["id"] for r in predictions(run_dir)]
    long = long_recording(clips, tmp_path / "long.wav")
    done = transcribe.run(compose("transcribe", [f"model_dir={run_dir / 'model'}", f"audio={long}",
                                                 f"output_dir={tmp_path / 'out'}", "hw=cpu", "progress_bar=false"]))
    assert done["done"] == [str(long)]
    out = json.loads((tmp_path / "out" / "long.json").read_text())
    duration = sf.info(str(long)).duration
    assert out["duration_s"] == pytest.approx(duration, abs=0.05) and out["decoder"].startswith("generation")
    starts = [s["start"] for s in out["segments"]]
    assert starts == sorted(starts) and all(0 <= s["start"] < s["end"] <= duration + 0.05 for s in out["segments"])
    assert out["text"] == " ".join(s["text"] for s in out["segments"])
    assert " ".join(w["word"] for w in out["words"]) == " ".join(out["text"].split())
    assert (tmp_path / "out" / "long.srt").read_text().strip() and (tmp_path / "out" / "long.vtt").is_file()

    # vad=true: the speech regions alone, packed into windows of speech (the pauses left out), each generated on its
    # own; segments in order, each starting and ending inside speech (mapped back across the pauses left out)
    transcribe.run(compose("transcribe", [f"model_dir={run_dir / 'model'}", f"audio={long}", "vad=true",
                                          f"output_dir={tmp_path / 'vad'}", "hw=cpu", "progress_bar=false"]))
    out = json.loads((tmp_path / "vad" / "long.json").read_text())
    regions = out["speech_regions"]
    assert len(regions) >= len(clips) and out["speech_s"] < duration
    starts = [s["start"] for s in out["segments"]]
    assert starts == sorted(starts) and out["text"] == " ".join(s["text"] for s in out["segments"])
    inside = lambda t: any(a - 1e-3 <= t <= b + 1e-3 for a, b in regions)  # noqa: E731
    assert all(inside(s["start"]) and inside(s["end"]) for s in out["segments"]), (out["segments"], regions)


def test_a_whisper_export_passes_the_gate_and_generates_as_pytorch_does(whisper_run, tmp_path, monkeypatch):
    """export.py on a Whisper: its three graphs (encoder.onnx, cross_kv.onnx, model.onnx) scored by the task's own
    evaluation (generation) beside the PyTorch model, the other graphs' hashes kept in the parity record; the decoder
    step by step on its cache as PyTorch over the whole sequence; transcribe.py with inference.runtime=onnx gives the
    PyTorch model's transcript, and the handler (serve.py, the endpoint) its answers; deploy.py packs the three
    graphs; a changed encoder file is refused in one line by each of them."""
    from speechkit.commands import export
    from speechkit.sagemaker.endpoint import pack
    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    run_dir = tmp_path / "run"
    shutil.copytree(whisper_run[0], run_dir)  # the exports go into its model/
    model_dir = run_dir / "model"
    figures = export.run(compose("export", [f"model_dir={model_dir}"]))
    assert figures["passed"] and figures["changed_predictions"] == 0 and figures["max_logit_difference"] < 1e-3
    record = json.loads((model_dir / "onnx" / "parity.json").read_text())["model.onnx"]
    assert set(record["companion_sha256"]) == {"encoder.onnx", "cross_kv.onnx"}
    assert all((model_dir / "onnx" / name).is_file() for name in record["companion_sha256"])

    # the decoder graph, step by step on the cache it gives, against PyTorch over the whole sequence
    from transformers import WhisperForConditionalGeneration

    from speechkit.onnx_export import exported_model, graph_files

    reference = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    steps = exported_model(graph_files(reference, str(model_dir / "onnx" / "model.onnx")), reference,
                           keep_reference=True)
    torch.manual_seed(0)
    features = torch.randn(2, reference.config.num_mel_bins, 2 * reference.config.max_source_positions)
    ids = torch.randint(0, reference.config.vocab_size, (2, 6))
    with torch.no_grad():
        expected = reference(input_features=features, decoder_input_ids=ids).logits
        out = steps(input_features=features, decoder_input_ids=ids[:, :3])  # a prompt of 3, then one at a time
        logits = [out.logits]
        for t in range(3, 6):
            out = steps(encoder_outputs=(out.encoder_last_hidden_state,), decoder_input_ids=ids[:, t:t + 1],
                        past_key_values=out.past_key_values)
            logits.append(out.logits)
    assert (torch.cat(logits, 1) - expected).abs().max() < 1e-4

    clip = predictions(run_dir)[0]["id"]  # (evaluate.py runs it through the gate's code: for_runtime, as for CTC)
    for runtime in ("torch", "onnx"):
        transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={clip}", "hw=cpu",
                                              f"inference.runtime={runtime}", f"output_dir={tmp_path / runtime}",
                                              "progress_bar=false"]))
    name = os.path.splitext(os.path.basename(clip))[0] + ".txt"
    assert (tmp_path / "onnx" / name).read_text() == (tmp_path / "torch" / name).read_text()

    # the handler (serve.py, the endpoint) serves it: the stock pipeline generating around the sessions, a long
    # clip in chunks of the window, as it serves the PyTorch model; deploy.py packs both graphs
    audio, rate = sf.read(clip, dtype="float32")
    answers = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("SPEECHKIT_RUNTIME", runtime)
        served = inference.model_fn(str(model_dir))
        answers[runtime] = [inference.predict_fn({"array": a, "sampling_rate": rate}, served)
                            for a in (audio, np.tile(audio, 3))]
    assert answers["onnx"] == answers["torch"] and answers["onnx"][1]["chunked"], answers
    assert len(served["model"].model.encoder.layers) == 0  # the sessions stand in for them: not held twice
    with tarfile.open(pack(str(model_dir), str(tmp_path / "model.tar.gz"), "onnx")) as tar:
        assert {"onnx/encoder.onnx", "onnx/model.onnx", "onnx/parity.json"} <= set(tar.getnames())

    with open(model_dir / "onnx" / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="encoder.onnx is not the graph export.py checked"):
        transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={clip}", "hw=cpu",
                                              "inference.runtime=onnx"]))
    with pytest.raises(ConfigError, match="encoder.onnx is not the graph export.py checked"):
        pack(str(model_dir), str(tmp_path / "model.tar.gz"), "onnx")
    monkeypatch.setenv("SPEECHKIT_RUNTIME", "onnx")
    with pytest.raises(inference.InferenceError, match="encoder.onnx is not the graph export.py checked"):
        inference.model_fn(str(model_dir))


def test_a_checkpoint_that_predicts_timestamps_times_its_segments_with_them(tmp_path):
    """A checkpoint in the openai layout (its generation config has Whisper's timestamp settings): transcribe.py
    generates with timestamps and reads segments off the timestamp tokens; a long recording's segments are in
    order, within the recording, and make up its text."""
    from speechkit.kinds.generation import Generated
    from speechkit.recordings import Transcriber

    checkpoint = make_whisper_checkpoint(tmp_path / "whisper", ["the cat sat", "a dog ran"])
    tone = np.sin(np.arange(16000 * 70) / 16000 * 2 * np.pi * 220).astype(np.float32) * 0.1
    sf.write(tmp_path / "long.wav", tone, 16000)
    cfg = compose("transcribe", [f"model_dir={checkpoint}", f"audio={tmp_path / 'long.wav'}",
                                 f"output_dir={tmp_path / 'out'}", "hw=cpu", "progress_bar=false", "batch_size=2"])
    assert transcribe.run(cfg)["done"] == [str(tmp_path / "long.wav")]
    result = json.loads((tmp_path / "out" / "long.json").read_text())
    assert result["decoder"].endswith("segments timed by Whisper's timestamp tokens")
    segments = result["segments"]
    assert all(0 <= s["start"] <= s["end"] <= 70.05 for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert result["text"] == " ".join(s["text"] for s in segments)

    # the timestamp tokens, read: <|0.00|> a b <|1.00|><|1.00|> c <|2.50|> d, in a window starting at 10 s
    output = Transcriber(str(checkpoint), OmegaConf.to_object(cfg)).output
    assert isinstance(output, Generated)
    tokenizer = output.tokenizer
    ts = {t: tokenizer.convert_tokens_to_ids(f"<|{t:.2f}|>") for t in (0.0, 1.0, 2.5)}
    a, b, c, d = tokenizer("tacs", add_special_tokens=False).input_ids
    assert ts[0.0] == output.timestamp_begin
    timed = output._timed([ts[0.0], a, b, ts[1.0], ts[1.0], c, ts[2.5], d], left=10.0, start=12.0, end=25.0)
    assert [(t, round(s, 2), round(e, 2)) for t, s, e in timed] == [
        (a, 10.0, 11.0), (b, 10.0, 11.0), (c, 11.0, 12.5), (d, 12.5, 25.0)]  # d: its segment ran to the end


def test_join_overlapping_windows_keeps_each_token_once():
    from speechkit.kinds.generation import join_overlapping

    merged = join_overlapping([[1, 2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8], [9]])
    assert [t for t, _, _ in merged] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [(w, j) for _, w, j in merged] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (2, 2), (3, 0)]
    assert [t for t, _, _ in join_overlapping([[1, 2], [3, 4]])] == [1, 2, 3, 4]  # no agreement: nothing dropped


def test_the_handler_and_serve_answer_a_whisper_model(whisper_run):
    from transformers import pipeline

    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    run_dir, _ = whisper_run
    served = inference.model_fn(str(run_dir / "model"))
    clip = predictions(run_dir)[0]
    audio, rate = sf.read(clip["id"], dtype="float32")
    answer = inference.predict_fn({"array": audio, "sampling_rate": rate}, served)
    assert answer["text"].strip() == clip["hypothesis"] and answer["chunked"] is False
    assert served["window_s"] == 4.0 and served["min_samples"] == 400
    long = inference.predict_fn({"array": np.tile(audio, 4), "sampling_rate": rate}, served)
    assert long["chunked"] is True  # longer than the model's window: fed in chunks of it at most
    stock = pipeline("automatic-speech-recognition", model=str(run_dir / "model"))
    assert answer["text"] == stock(clip["id"])["text"]  # the pipeline decodes the file at 16 kHz itself


def test_serve_py_answers_a_whisper_model_over_http(whisper_run):
    """serve.py on a Whisper model/: a WAV posted to /invocations comes back as the text speechkit's evaluation
    gave for that clip."""
    from conftest import serve_and_post_wav

    run_dir, _ = whisper_run
    clip = predictions(run_dir)[0]
    answer = serve_and_post_wav(run_dir / "model", clip["id"])
    assert answer["text"].strip() == clip["hypothesis"]


def _resume(run_dir, *extra):
    return compose("train", [*WHISPER_DEMO, "trainer.max_steps=6", "trainer.save_steps=3", "trainer.eval_steps=3",
                             "trainer.save_total_limit=null", "model.attention_dropout=0.1",
                             "+model.config_overrides.dropout=0.1", f"run_dir={run_dir}", *extra])


def test_a_whisper_run_resumes_exactly(tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.run(_resume(full))
    shutil.copytree(full, stopped)
    for later in ("checkpoints/step-6", "checkpoints/best", "model"):
        shutil.rmtree(stopped / later)
    train.run(_resume(stopped, "trainer.resume=auto"))
    a = load_file(full / "checkpoints" / "step-6" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "checkpoints" / "step-6" / "trainer_state.json").read_text()) == \
        json.loads((stopped / "checkpoints" / "step-6" / "trainer_state.json").read_text())


def test_two_processes_train_a_whisper_and_score_every_clip_once(tmp_path):
    from conftest import accelerate_launch

    run_dir = tmp_path / "run"
    done = accelerate_launch(*WHISPER_DEMO, "trainer.max_steps=2", "trainer.save_steps=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-5000:]
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1]["eval_utterances"] == 6 and evals[-1]["eval_gathered"] >= 6
    assert len(predictions(run_dir)) == 6 and (run_dir / "model" / "model.safetensors").is_file()


def test_clips_longer_than_the_window_and_transcripts_longer_than_the_decoder_are_dropped_and_named(tmp_path):
    data = tmp_path / "data"
    rows = [(f"{i}.wav", text) for i, text in enumerate(["the cat sat", "a dog ran", "we like tea", "go home"])]
    for name, text in rows:
        speak(text, (data / "train").mkdir(parents=True, exist_ok=True) or data / "train" / name)
    sf.write(data / "train" / "long.wav", np.tile(sf.read(data / "train" / "0.wav")[0], 4), 22050)  # > 4 s
    rows += [("long.wav", "the cat sat " * 4), ("1.wav", "a dog ran " * 10)]  # audio too long; 50+ tokens
    write_metadata(data / "train", rows)
    speak("the dog sat", (data / "test").mkdir() or data / "test" / "t.wav")
    write_metadata(data / "test", [("t.wav", "the dog sat")])
    run_dir = tmp_path / "run"
    train.run(compose("train", ["dataset=audiofolder", f"dataset.path={data}", "dataset.language=en",
                                "dataset.filters.max_duration_s=null", *TINY_WHISPER, *WHISPER_FAST,
                                "trainer.max_steps=1", f"run_dir={run_dir}"]))
    report = [json.loads(x) for x in (run_dir / "drop_report.jsonl").read_text().splitlines()]
    reasons = {(r["file"].rsplit("/", 1)[-1], r["reason"]) for r in report}
    assert reasons == {("long.wav", "too_long"), ("1.wav", "transcript_too_long")}
    detail = {r["reason"]: r["detail"] for r in report}
    assert "input window (4.0 s)" in detail["too_long"] and "max_target_positions (48)" in \
        detail["transcript_too_long"]


def test_a_pretrained_whisper_keeps_its_tokenizer_and_is_prompted_in_the_data_sets_language(tmp_path):
    """The recipe's path on a local copy in the Hub's layout: the checkpoint's own tokenizer, feature extractor (a 30 s
    window) and generation config, the forced decoder ids it ships replaced by the language and task of FLEURS
    Spanish; its data through the recipe's own data config."""
    from transformers import GenerationConfig, WhisperTokenizer

    fleurs = make_fleurs(tmp_path / "fleurs")
    checkpoint = make_whisper_checkpoint(tmp_path / "whisper", [t for texts in FLEURS_KEPT.values() for t in texts])
    run_dir = tmp_path / "run"
    train.run(compose("train", ["experiment=whisper_small_fleurs_es", f"dataset.path={fleurs}",
                                "dataset.revision=null", f"model.name_or_path={checkpoint}",
                                "model.gradient_checkpointing=false", "hw=cpu", "hw.mixed_precision=no",
                                "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.save_steps=2",
                                "trainer.batch_size=2", "trainer.eval_batch_size=2", "trainer.progress_bar=false",
                                "task.decoder.max_new_tokens=8", f"run_dir={run_dir}"]))
    model_dir = run_dir / "model"
    generation = GenerationConfig.from_pretrained(model_dir)
    assert (generation.language, generation.task, generation.forced_decoder_ids) == ("es", "transcribe", None)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    assert tokenizer.get_vocab() == WhisperTokenizer.from_pretrained(checkpoint).get_vocab()
    assert json.loads((model_dir / "config.json").read_text())["max_source_positions"] == 1500
    assert [r["reference"] for r in predictions(run_dir)] == FLEURS_KEPT["validation"]


def test_the_whisper_recipe_has_the_blog_settings():
    cfg = OmegaConf.to_container(compose("train", ["experiment=whisper_small_fleurs_es", "run_dir=/x"]),
                                 resolve=True, enum_to_str=True)
    assert cfg["model"]["name_or_path"] == "openai/whisper-small" and cfg["model"]["gradient_checkpointing"]
    t = cfg["trainer"]
    assert (t["learning_rate"], t["warmup_steps"], t["max_steps"], t["batch_size"]) == (1e-5, 500, 4000, 16)
    assert (t["eval_steps"], t["save_steps"], t["final_model"]) == (1000, 1000, "best")
    assert cfg["hw"]["mixed_precision"] == "fp16" and cfg["task"]["decoder"]["max_new_tokens"] + 4 == 225
    assert cfg["dataset"]["name"] == "fleurs_es" and cfg["dataset"]["language"] == "es"


def test_the_auxiliary_ctc_layer_trains_with_the_model_and_does_not_ship(tmp_path):
    """task.whisper_ctc_weight=w: the loss is (1 - w) x the decoder's + w x CTC of the encoder's frames through a
    training-only layer, against the transcript's own tokens (no prompt, no end, <|endoftext|> the blank); the layer
    is in every checkpoint (so resuming holds) and not in model/, which the stock class loads without a warning."""
    from transformers import WhisperForConditionalGeneration

    from speechkit.tasks import load_model_dir
    from speechkit.kinds.generation.hybrid import attach_ctc_layer

    run_dir = tmp_path / "run"
    train.run(compose("train", [*WHISPER_DEMO, "task.whisper_ctc_weight=0.3", "trainer.max_steps=2",
                                "trainer.save_steps=2", "trainer.eval_steps=2", f"run_dir={run_dir}"]))
    checkpoint = load_file(run_dir / "checkpoints" / "step-2" / "model.safetensors")
    assert {"ctc_head.weight", "ctc_head.bias"} <= checkpoint.keys()
    assert not [k for k in load_file(run_dir / "model" / "model.safetensors") if k.startswith("ctc_head")]
    _, info = WhisperForConditionalGeneration.from_pretrained(run_dir / "model", output_loading_info=True)
    assert not any(info.values()), info

    task, model = load_model_dir(str(run_dir / "model"))
    texts = ["the cat sat", "a dog ran home"]
    audio = [np.random.default_rng(i).normal(0, 0.1, 16000 * (i + 1)).astype(np.float32) for i in range(2)]
    features = task.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    batch = {"input_features": features,
             **task.kind.batch_targets()([{"labels": task.kind.tokenizer(t).input_ids} for t in texts], {})}
    model.train()  # no dropout or masking in this model: training mode is deterministic
    plain = task.forward(model, batch).loss
    attach_ctc_layer(model)
    model.ctc_head.load_state_dict({"weight": checkpoint["ctc_head.weight"], "bias": checkpoint["ctc_head.bias"]})
    task.cfg.whisper_ctc_weight = 0.3
    out = task.forward(model, batch)
    model.eval()
    assert torch.equal(task.forward(model, batch).loss, plain)  # evaluation: the decoder's loss alone
    tokens = [task.kind.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    frames = out.ctc_logits
    ctc = torch.nn.functional.ctc_loss(
        frames.log_softmax(-1).transpose(0, 1), torch.tensor(sum(tokens, [])), torch.full((2,), frames.shape[1]),
        torch.tensor([len(t) for t in tokens]), blank=task.kind.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    assert torch.isfinite(ctc) and ctc > 0
    assert torch.allclose(out.loss, 0.7 * plain + 0.3 * ctc, atol=1e-5)
