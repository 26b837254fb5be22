"""export.py: a trained CTC model in ONNX (float32 and int8) beside its Hugging Face weights, run by onnxruntime and
kept only when the parity gate finds it scores as the PyTorch model does; a broken export is refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import compose, run_cli

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (README, Tests)


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
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())
    assert parity["passed"] and parity["quantize"] == "none" and parity["split"] == "test"  # the run's eval split
    assert parity["utterances"] == 6 and parity["changed_transcripts"] == 0
    assert parity["exported"] == parity["pytorch"] and parity["max_logit_difference"] < 1e-4
    assert "| WER | " in done.stdout and "0 transcript(s) changed: kept" in done.stdout

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
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())
    assert parity["quantize"] == "int8" and parity["tolerance"] == 0.02 and parity["passed"]
    assert parity["wer_difference"] <= 0.02 and parity["max_logit_difference"] > 0  # int8 is not exact
    int8 = model_dir / "onnx" / "model.int8.onnx"
    assert int8.stat().st_size < (model_dir / "onnx" / "model.onnx").stat().st_size


def test_an_export_that_scores_differently_is_refused_and_removed(run_copy, monkeypatch):
    """A deliberately broken export (the exported head's logits negated, as a converted model with a wrong head
    would be): the gate refuses it, removes its file, and keeps the figures."""
    from speechkit import onnx_export as export
    from speechkit.commands import export as command
    from speechkit.config import RunError

    real = export.export

    def broken(model, path):
        head = model.lm_head
        with torch.no_grad():
            head.weight.neg_(), head.bias.neg_()
            try:
                return real(model, path)
            finally:
                head.weight.neg_(), head.bias.neg_()

    monkeypatch.setattr(export, "export", broken)
    model_dir = run_copy / "model"
    with pytest.raises(RunError) as refused:
        command.run(compose("export", [f"model_dir={model_dir}", "tolerance=0"]))
    said = str(refused.value)
    assert said.startswith("the export differs from the PyTorch model by ") and "above tolerance=0.0" in said
    assert not (model_dir / "onnx" / "model.onnx").exists()
    parity = json.loads((model_dir / "onnx" / "parity.json").read_text())
    assert parity["passed"] is False and parity["changed_transcripts"] > 0 and parity["wer_difference"] > 0


@pytest.fixture(scope="module")
def clip_16k(tmp_path_factory):
    from conftest import speak
    from speechkit.data.audio import decode

    return decode(str(speak("the quick brown fox", tmp_path_factory.mktemp("clip") / "fox.wav")), 16000)
