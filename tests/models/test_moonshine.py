"""Moonshine, a second family of the generation head kind (speechkit/models/moonshine.py): an encoder-decoder over
the raw waveform with no prompt. A small random-init one with a character tokenizer built from the transcripts is
trained, resumed exactly, shipped as a folder transformers' own classes and the stock pipeline load and that
transcribes as speechkit scored, evaluated, transcribed over 2 minutes, served; its rules refused in one line."""

import csv
import json
import shutil

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import SMALL_DEMO, compose, long_recording, run_cli
from speechkit.commands import evaluate, train, transcribe
from speechkit.config import ConfigError

pytestmark = pytest.mark.slow

TINY_MOONSHINE = ["model=moonshine_scratch", "model.architecture.hidden_size=64",
                  "model.architecture.intermediate_size=128", "model.architecture.encoder_num_hidden_layers=1",
                  "model.architecture.decoder_num_hidden_layers=1"]
MOONSHINE_DEMO = ["dataset=demo_en", *SMALL_DEMO, *TINY_MOONSHINE, "hw=cpu", "trainer.batch_size=4",
                  "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
                  "trainer.progress_bar=false", "trainer.learning_rate=3e-3", "task.decoder.max_new_tokens=12"]


def predictions(run_dir):
    with open(run_dir / "predictions.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def moonshine_run(tmp_path_factory):
    """`python train.py model=moonshine_scratch dataset=demo_en` for a few steps, as typed."""
    run_dir = tmp_path_factory.mktemp("moonshine_run") / "run"
    done = run_cli("train.py", *MOONSHINE_DEMO, "trainer.max_steps=12", "trainer.save_steps=6",
                   "trainer.eval_steps=6", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


def test_a_scratch_moonshine_ships_a_folder_the_stock_pipeline_transcribes_as_speechkit_scored(moonshine_run):
    """transformers' own classes load model/ (MoonshineForConditionalGeneration, the character tokenizer through
    AutoTokenizer, Wav2Vec2Processor through AutoProcessor); the stock pipeline, greedy as speechkit scored, gives
    each clip's hypothesis."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, AutoTokenizer, GenerationConfig, pipeline

    model_dir = moonshine_run / "model"
    assert type(AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)).__name__ == "MoonshineForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(model_dir)).__name__ == "Wav2Vec2Processor"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.decode(tokenizer("the cat sat").input_ids) == "the cat sat"  # one token a character, spaces kept
    generation = GenerationConfig.from_pretrained(model_dir)
    assert (generation.decoder_start_token_id, generation.eos_token_id, generation.max_length) == (1, 2, 1 + 12)
    asr = pipeline("automatic-speech-recognition", model=str(model_dir))
    rows = predictions(moonshine_run)
    assert len(rows) == 6
    for row in rows:  # the stock pipeline beam-searches 5 beams unless told: speechkit scored greedily (num_beams 1)
        assert asr(row["id"], generate_kwargs={"num_beams": 1})["text"].strip() == row["hypothesis"], row["id"]
    log = (moonshine_run / "train.log").read_text()
    assert "Built moonshine_scratch from scratch" in log and "tokens (no prompt)" in log
    assert "sequence to sequence, Moonshine" in (model_dir / "README.md").read_text()


def test_evaluate_and_transcribe_take_a_moonshine_model(moonshine_run, tmp_path):
    model_dir = moonshine_run / "model"
    result = evaluate.run(compose("evaluate", [f"model_dir={model_dir}", "dataset=demo_en", *SMALL_DEMO, "hw=cpu",
                                               f"run_dir={tmp_path / 'eval'}"]))
    assert [p["hypothesis"] for p in result.predictions] == [r["hypothesis"] for r in predictions(moonshine_run)]

    # a 2-minute recording, in windows of chunk_length_s (Moonshine takes any length), joined where they overlap
    clips = [r["id"] for r in predictions(moonshine_run)]
    long = long_recording(clips, tmp_path / "long.wav")
    done = transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={long}", "chunk_length_s=10",
                                                 "stride_length_s=2", f"output_dir={tmp_path / 'out'}", "hw=cpu",
                                                 "progress_bar=false"]))
    assert done["done"] == [str(long)]
    out = json.loads((tmp_path / "out" / "long.json").read_text())
    duration = sf.info(str(long)).duration
    assert out["duration_s"] == pytest.approx(duration, abs=0.05)
    assert out["decoder"] == "generation (1 beam; no prompt)"
    starts = [s["start"] for s in out["segments"]]
    assert starts == sorted(starts) and all(0 <= s["start"] <= s["end"] <= duration + 0.05 for s in out["segments"])
    assert out["text"] == " ".join(s["text"] for s in out["segments"])
    assert " ".join(w["word"] for w in out["words"]) == " ".join(out["text"].split())


def test_the_handler_and_serve_answer_a_moonshine_model(moonshine_run):
    """serve.py on a Moonshine model/: a WAV posted to /invocations comes back with the text speechkit's evaluation
    gave for that clip (the handler's stock pipeline, greedy as the model's generation config says)."""
    from conftest import serve_and_post_wav

    clip = predictions(moonshine_run)[0]
    answer = serve_and_post_wav(moonshine_run / "model", clip["id"])
    assert answer["text"].strip() == clip["hypothesis"]


def test_a_moonshine_export_passes_the_gate_and_generates_as_pytorch_does(moonshine_run, tmp_path, monkeypatch):
    """export.py on a Moonshine: the generation kind's three graphs, the encoder's over a waveform of any length with
    its attention mask (and the frame mask it gives the decoder's cross-attention), scored by the task's own
    evaluation beside the PyTorch model in padded batches; the decoder step by step on its cache as PyTorch over
    the whole sequence; transcribe.py and the handler (as deploy.py ships it) answer with the export as with
    PyTorch."""
    import os

    from transformers import MoonshineForConditionalGeneration

    from conftest import shipped_handler
    from speechkit.commands import export
    from speechkit.onnx_export import exported_model, graph_files

    inference = shipped_handler()
    run_dir = tmp_path / "run"
    shutil.copytree(moonshine_run, run_dir)
    model_dir = run_dir / "model"
    figures = export.run(compose("export", [f"model_dir={model_dir}"]))
    assert figures["passed"] and figures["changed_predictions"] == 0 and figures["max_logit_difference"] < 1e-3

    reference = MoonshineForConditionalGeneration.from_pretrained(model_dir).eval()
    steps = exported_model(graph_files(reference, str(model_dir / "onnx" / "model.onnx")), reference,
                           keep_reference=True)
    torch.manual_seed(0)
    audio = torch.randn(2, 20000) * 0.1
    mask = torch.ones(2, 20000, dtype=torch.long)
    mask[1, 12000:] = 0  # a shorter clip, padded: the cross-attention reads its frames alone
    audio[1, 12000:] = 0
    ids = torch.randint(3, reference.config.vocab_size, (2, 6))
    with torch.no_grad():
        expected = reference(input_values=audio, attention_mask=mask, decoder_input_ids=ids).logits
        out = steps(input_values=audio, attention_mask=mask, decoder_input_ids=ids[:, :3])
        encoded, logits = steps.get_encoder()(audio, attention_mask=mask), [out.logits]
        for t in range(3, 6):
            out = steps(encoder_outputs=encoded, decoder_input_ids=ids[:, t:t + 1], past_key_values=out.past_key_values)
            logits.append(out.logits)
    assert (torch.cat(logits, 1) - expected).abs().max() < 1e-4

    clip = predictions(run_dir)[0]["id"]
    for runtime in ("torch", "onnx"):
        transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={clip}", "hw=cpu",
                                              f"inference.runtime={runtime}", f"output_dir={tmp_path / runtime}",
                                              "progress_bar=false"]))
    name = os.path.splitext(os.path.basename(clip))[0] + ".txt"
    assert (tmp_path / "onnx" / name).read_text() == (tmp_path / "torch" / name).read_text()
    samples, rate = sf.read(clip, dtype="float32")
    answers = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("SPEECHKIT_RUNTIME", runtime)
        served = inference.model_fn(str(model_dir))
        answers[runtime] = inference.predict_fn({"array": samples, "sampling_rate": rate}, served)
    assert answers["onnx"] == answers["torch"] and served["min_samples"] == 895  # Moonshine's receptive field


def _resume(run_dir, *extra):
    return compose("train", [*MOONSHINE_DEMO, "trainer.max_steps=6", "trainer.save_steps=3", "trainer.eval_steps=3",
                             "trainer.save_total_limit=null", "model.attention_dropout=0.1", f"run_dir={run_dir}",
                             *extra])


def test_a_moonshine_run_resumes_exactly(tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.run(_resume(full))
    shutil.copytree(full, stopped)
    for later in ("checkpoints/step-6", "checkpoints/best", "model"):
        shutil.rmtree(stopped / later)
    train.run(_resume(stopped, "trainer.resume=auto"))
    a = load_file(full / "checkpoints" / "step-6" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, key", [
    (["task.whisper_task=translate"], "task.whisper_task"),  # its prompt has no task
    (["task.decoder.type=kenlm"], "task.decoder.type"),  # an n-gram LM decodes CTC frames
    (["task.vocab.source=pretrained"], "task.vocab.source"),  # built from scratch: no checkpoint's tokenizer
    (["augment=specaugment"], "augment.specaugment"),  # Moonshine has no masking settings
])
def test_what_a_moonshine_cannot_take_is_refused_in_one_line(overrides, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train.run(compose("train", [*MOONSHINE_DEMO, *overrides, f"run_dir={tmp_path}"]))


def test_a_moonshine_needs_no_language():
    """Whisper's prompt names the language (dataset.language is required); Moonshine's has none."""
    from speechkit.validation import check_values

    check_values(compose("train", [*TINY_MOONSHINE, "dataset=audiofolder", "dataset.path=/tmp", "run_dir=/x"]))
