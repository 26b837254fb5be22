"""export.py: a trained CTC model in ONNX (float32 and int8) beside its Hugging Face weights, run by onnxruntime and
kept only when the parity gate finds it scores as the PyTorch model does; a broken export is refused."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_DEMO, compose, run_cli


def sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


@pytest.fixture(scope="module")
def run_copy(asr_demo_run, tmp_path_factory):
    """The demo run's dir, copied: exports write into its model/ folder."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(asr_demo_run[0], run_dir)
    return run_dir


def test_an_export_is_scored_against_the_pytorch_model_and_kept(run_copy, clip_16k):
    import onnxruntime as ort
    from transformers import AutoModelForCTC, pipeline

    model_dir = run_copy / "model"
    done = run_cli("export.py", f"model_dir={model_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())["model.onnx"]
    assert parity["passed"] and parity["quantize"] == "none" and parity["split"] == "test"  # the run's eval split
    assert parity["utterances"] == 6 and parity["changed_predictions"] == 0 and parity["metric"] == "WER"
    assert parity["exported"] == parity["pytorch"] and set(parity["pytorch"]) == {"eval_wer", "eval_cer"}
    assert parity["max_logit_difference"] < 1e-4 and parity["tolerance"] == 0.002
    assert parity["sha256"] == sha256(model_dir / "onnx" / "model.onnx")
    assert parity["weights_sha256"] == sha256(model_dir / "model.safetensors")
    assert "| WER | " in done.stdout and "0 prediction(s) changed: kept" in done.stdout

    # The graph takes any batch and length (dynamic axes), and gives the model's logits.
    session = ort.InferenceSession(str(model_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = AutoModelForCTC.from_pretrained(model_dir).eval()
    for n in (2, 3):
        x = torch.from_numpy(np.stack([clip_16k[: 8000 * n]] * n))
        mask = torch.ones(x.shape, dtype=torch.long)
        got = session.run(["logits"], {"input_values": x.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = model(x, attention_mask=mask).logits.numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
    # The folder is still the plain Hugging Face one the stock pipeline loads.
    assert isinstance(pipeline("automatic-speech-recognition", model=str(model_dir))(clip_16k)["text"], str)


def test_int8_is_smaller_and_within_its_tolerance(run_copy):
    model_dir = run_copy / "model"
    done = run_cli("export.py", f"model_dir={model_dir}", "quantize=int8")
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((model_dir / "onnx" / "parity.json").read_text())
    assert set(records) == {"model.onnx", "model.int8.onnx"}  # the float32 record is kept beside it
    parity = records["model.int8.onnx"]
    assert parity["quantize"] == "int8" and parity["tolerance"] == 0.02 and parity["passed"]
    assert parity["difference"] <= 0.02 and parity["max_logit_difference"] > 0  # int8 is not exact
    int8 = model_dir / "onnx" / "model.int8.onnx"
    assert int8.stat().st_size < (model_dir / "onnx" / "model.onnx").stat().st_size


def test_the_handler_and_serve_run_the_export_as_they_run_pytorch(run_copy, clip_16k, long_wav, monkeypatch):
    """inference.runtime=onnx: the handler answers from the ONNX session (features in numpy, frames decoded by the
    tokenizer, windows of a long recording stitched as the stock pipeline's chunking does) what it answers from
    PyTorch, and serve.py serves it over HTTP; bad input keeps its 4xx."""
    from conftest import serve_and_post_wav
    from speechkit.data.audio import decode
    from conftest import shipped_handler
    from speechkit.tasks import load_model_dir
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    model_dir = str(run_copy / "model")
    long_clip = decode(str(long_wav), 16000)
    assert long_clip.size > 20 * 16000  # longer than the handler's 20 s chunk: windows are stitched
    answers = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("SPEECHKIT_RUNTIME", runtime)
        model = inference.model_fn(model_dir)
        assert ("session" in model) == (runtime == "onnx")
        answers[f"{runtime} shortest"] = model["min_samples"]  # both refuse a clip under the receptive field
        answers[runtime] = [inference.predict_fn({"array": clip, "sampling_rate": 16000}, model)
                            for clip in (clip_16k, long_clip)]
        with pytest.raises(inference.InferenceError) as short:  # bad input keeps its 400
            inference.predict_fn({"array": clip_16k[:model["min_samples"] - 1], "sampling_rate": 16000}, model)
        assert short.value.status_code == 400 and "receptive field" in short.value.message
    assert answers["onnx"] == answers["torch"] and answers["onnx"][1]["chunked"]
    task, model = load_model_dir(model_dir)  # the family's own arithmetic, which the handler may not import
    assert answers["onnx shortest"] == answers["torch shortest"] == task.family.receptive_field(model.config, 16000)
    assert answers["onnx"][1]["text"].strip()  # not an empty transcript agreeing with another

    served = serve_and_post_wav(model_dir, long_wav, "inference.runtime=onnx")
    assert served["text"] == answers["torch"][1]["text"]


def test_the_handler_serves_the_export_without_torch(run_copy, clip_16k, monkeypatch):
    """The ONNX path needs no torch: in a process where torch and torchcodec cannot be imported (as if not
    installed), a JSON request at the model's rate goes through input_fn, predict_fn and output_fn and answers what
    the PyTorch model answers."""
    import subprocess
    import sys

    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    model_dir = str(run_copy / "model")
    body = json.dumps({"speech_array": clip_16k.tolist(), "sampling_rate": 16000})
    monkeypatch.setenv("SPEECHKIT_RUNTIME", "torch")
    want = inference.predict_fn(inference.input_fn(body, "application/json"), inference.model_fn(model_dir))
    script = (
        "import sys\n"
        "for name in ('torch', 'torchcodec', 'torchaudio', 'torchvision'):\n"
        "    sys.modules[name] = None  # import torch now raises ImportError\n"
        f"sys.path.insert(0, {str(Path(inference.__file__).parent)!r})\n"
        "import inference\n"
        f"model = inference.model_fn({model_dir!r})\n"
        "answer = inference.predict_fn(inference.input_fn(sys.stdin.read(), 'application/json'), model)\n"
        "print(inference.output_fn(answer, 'application/json'))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None]\n")
    done = subprocess.run([sys.executable, "-c", script], input=body, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SPEECHKIT_RUNTIME": "onnx"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["text"] == want["text"] and got["duration_s"] == want["duration_s"]


def test_evaluate_and_transcribe_run_the_export(run_copy, long_wav, tmp_path):
    from speechkit.commands import evaluate, transcribe

    model_dir = run_copy / "model"
    scored = {}
    for runtime in ("torch", "onnx"):
        scored[runtime] = evaluate.run(compose("evaluate", [
            f"model_dir={model_dir}", "dataset=demo_en", *SMALL_DEMO,
            "split=test", "hw=cpu", f"inference.runtime={runtime}", f"run_dir={tmp_path / runtime}"]))
    assert scored["onnx"].metrics["eval_wer"] == scored["torch"].metrics["eval_wer"]
    assert scored["onnx"].predictions == scored["torch"].predictions
    assert "(onnx)" in (tmp_path / "onnx" / "report.html").read_text()  # the report says what ran

    said = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"transcribed_{runtime}"
        transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={long_wav}", f"output_dir={out}",
                                              "hw=cpu", "progress_bar=false", f"inference.runtime={runtime}"]))
        said[runtime] = json.loads((out / "long.json").read_text())
    assert said["onnx"]["text"] == said["torch"]["text"] and said["onnx"]["words"] == said["torch"]["words"]


def test_a_missing_or_stale_export_is_refused_naming_export_py(run_copy, tmp_path):
    """Nothing is served that the gate did not check: no export, an export of other weights (the model trained
    again since), each refused in one line that says what to run."""
    from transformers import AutoModelForCTC

    model_dir = tmp_path / "model"
    shutil.copytree(run_copy / "model", model_dir)
    shutil.rmtree(model_dir / "onnx", ignore_errors=True)
    done = run_cli("serve.py", f"model_dir={model_dir}", "inference.runtime=onnx")
    assert done.returncode == 2
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("speechkit: config error: model_dir: inference.runtime=onnx: ") and said.endswith(
        f"is not there; export the model first: python export.py model_dir={model_dir}")

    shutil.copytree(run_copy / "model" / "onnx", model_dir / "onnx")
    model = AutoModelForCTC.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.bias.add_(0.1)  # as a further training would change them
    model.save_pretrained(model_dir)
    done = run_cli("evaluate.py", f"model_dir={model_dir}", "dataset=demo_en", *SMALL_DEMO, "split=test", "hw=cpu",
                   "inference.runtime=onnx", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 2 and "is not the file export.py checked against the weights beside it" in done.stderr
    assert f"export it again: python export.py model_dir={model_dir}" in done.stderr
    assert not (tmp_path / "eval" / "predictions.csv").exists()  # refused before any data was read


def test_deploy_packs_the_checked_export_and_the_endpoint_loads_it(run_copy, tmp_path, monkeypatch):
    """deploy.py inference.runtime=onnx_int8: model.tar.gz holds the int8 export and its parity record (not the
    float32 file), onnxruntime is in code/requirements.txt, and the handler, unpacked as the container unpacks it,
    serves it (the hashes travel with it); a runtime with no export is refused before anything is uploaded."""
    import tarfile

    from speechkit.sagemaker.endpoint import pack
    from speechkit.config import ConfigError
    from conftest import shipped_handler

    model_dir = run_copy / "model"
    tarball = pack(str(model_dir), str(tmp_path / "model.tar.gz"), "onnx_int8")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("code/requirements.txt").read().decode().split()
        tar.extractall(tmp_path / "opt_ml_model", filter="data")
    assert {"onnx/model.int8.onnx", "onnx/parity.json", "model.safetensors", "code/inference.py"} <= names
    assert "onnx/model.onnx" not in names and "onnxruntime==1.32.0" in requirements
    monkeypatch.setenv("SPEECHKIT_RUNTIME", "onnx_int8")
    inference = shipped_handler(tmp_path / "opt_ml_model" / "code" / "inference.py")  # the one model.tar.gz holds
    assert inference.model_fn(str(tmp_path / "opt_ml_model"))["runtime"] == "onnx_int8"

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(ConfigError, match="export the model first: python export.py"):
        pack(str(bare), str(tmp_path / "bare.tar.gz"), "onnx")
    assert not (tmp_path / "bare.tar.gz").exists()


def test_an_export_that_scores_differently_is_refused_and_removed(run_copy, monkeypatch, tmp_path):
    """A deliberately broken export (the exported head's logits negated, as a converted model with a wrong head
    would be): the gate refuses it, removes its file, and keeps the figures."""
    from speechkit import onnx_export as export
    from speechkit.commands import export as command
    from speechkit.config import RunError

    real = export.export

    def broken(model, example, path, lengths):
        head = model.lm_head
        with torch.no_grad():
            head.weight.neg_(), head.bias.neg_()
            try:
                return real(model, example, path, lengths)
            finally:
                head.weight.neg_(), head.bias.neg_()

    monkeypatch.setattr(export, "export", broken)
    shutil.copytree(run_copy, tmp_path / "run")
    model_dir = tmp_path / "run" / "model"
    with pytest.raises(RunError) as refused:
        command.run(compose("export", [f"model_dir={model_dir}", "tolerance=0"]))
    said = str(refused.value)
    assert said.startswith("the export differs from the PyTorch model by ") and "above tolerance=0.0" in said
    assert not (model_dir / "onnx" / "model.onnx").exists()
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())["model.onnx"]
    assert parity["passed"] is False and parity["changed_predictions"] > 0 and parity["difference"] > 0


@pytest.fixture(scope="module")
def clip_16k(tmp_path_factory):
    from conftest import speak
    from speechkit.data.audio import decode

    return decode(str(speak("the quick brown fox", tmp_path_factory.mktemp("clip") / "fox.wav")), 16000)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """About 30 s of real speech in one recording (longer than the handler's 20 s chunk)."""
    from conftest import speak
    import soundfile as sf
    from speechkit.data.audio import decode

    folder = tmp_path_factory.mktemp("long")
    sentences = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
                 "she sells sea shells by the sea shore", "every good boy does fine"]
    parts = [decode(str(speak(text, folder / f"{i}.wav")), 16000) for i, text in enumerate(sentences * 3)]
    sf.write(folder / "long.wav", np.concatenate(parts), 16000)
    return folder / "long.wav"
