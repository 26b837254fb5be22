"""The inference handler: SageMaker's Hugging Face/PyTorch toolkit contract, shipped as `code/inference.py`.

    model_fn(model_dir)                 -> the model and its pipeline: speech recognition for a CTC or a
                                           generating model (Whisper, Moonshine), audio classification for a
                                           classifier, whatever its family
    input_fn(body, content_type)        -> a mono clip, from JSON {"speech_array": [...], "sampling_rate": N}
                                           or from raw audio bytes (audio/wav, audio/flac, audio/x-audio, ...)
    predict_fn(clip, model)             -> {"text": ..., "duration_s": ...}; resampled to the model's rate, long
                                           audio transcribed in overlapping chunks; a classifier answers
                                           {"labels": [{"label", "score"}, ...top 5], "duration_s": ...}
    output_fn(prediction, accept)       -> JSON: that object, or with SPEECHKIT_RESPONSE=transcript the bare
                                           transcript as a JSON string (what the AWS recipe's endpoint answers)

This module holds model_fn and predict_fn; input_fn and output_fn, with the limits on requests, are in
requests.py, the ONNX runtime in onnx.py, the table of heads in heads.py. It ships as one file: bundle.py joins
heads.py, requests.py, onnx.py and this module into code/inference.py, which is self-contained (numpy, torch,
torchcodec, transformers; nothing from speechkit), so the same file runs in the endpoint's container, in `python
serve.py` on this machine, and in the tests. Requests that cannot be served raise `InferenceError` with an HTTP
status and a message saying what is wrong. Nothing here unpickles input or trusts remote code: bodies are parsed as
JSON or decoded as audio by FFmpeg, and the model loads from safetensors only, through the transformers Auto class
of its head (SERVED).

Settings come from the environment (set on the SageMaker model by deploy.py, and by serve.py):
SPEECHKIT_MAX_BODY_MB (6), SPEECHKIT_MAX_AUDIO_S (300; none: no limit), SPEECHKIT_CHUNK_LENGTH_S (20; 0/none:
never chunk), SPEECHKIT_STRIDE_LENGTH_S (4; none: chunk/6), SPEECHKIT_RESPONSE (details; or transcript),
SPEECHKIT_DEVICE (cuda when available, else cpu), SPEECHKIT_RUNTIME (torch; onnx or onnx_int8: the model's export in
<model_dir>/onnx/, made and checked by export.py, run by onnxruntime).

With an ONNX runtime a CTC model or a classifier runs without torch: features by the feature extractor in numpy,
the graph by onnxruntime, CTC frames decoded by the tokenizer, a classifier's scores by numpy. A generating export (its
three graphs) needs torch: the stock pipeline and transformers' `generate` run around its sessions
(`onnx_generating`), so its answers are made as the PyTorch model's are. torch is still imported for
audio files and for JSON at another rate (FFmpeg's decoder and resampler come through torchcodec); JSON at the
model's own rate touches no torch at all. The ONNX file is served only if export.py's parity record says it passed
and was made from the weights the folder holds now, so what is served is what was scored.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from speechkit.inference.heads import HEADS
from speechkit.inference.onnx import (checked_onnx_files, onnx_generating, onnx_labels, onnx_session,
                                      onnx_transcript, runtime)
from speechkit.inference.requests import InferenceError, _env_float, input_fn, output_fn

# --------------------------------------------------------------------------------------------- model_fn
# What a model is served as, by the head its config's architectures name (heads.py, the one table of heads): the
# pipeline (the speechkit task's own pipeline tag, speechkit/tasks/), the transformers Auto class that loads it and
# its list of architectures; a head with no pipeline (a diarizer's frames) is not served. Any model family
# transformers has these heads for is served alike (wav2vec2, HuBERT, WavLM, w2v-BERT, Whisper, Moonshine, AST ...).
SERVED = [(pipeline, auto, mapping) for auto, mapping, pipeline in HEADS.values() if pipeline]


def served_as(config) -> Optional[tuple]:
    """(pipeline, Auto class) a saved model is served by, from its config's architectures; None: not one this
    serves."""
    import importlib

    # the module itself (a plain table of names): through transformers' lazy `models.auto` it is a stand-in that
    # needs torch, and the ONNX runtime serves without torch
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")
    for task, auto, mapping in SERVED:
        if set(config.architectures or ()) & set(getattr(modeling_auto, mapping).values()):
            return task, auto
    return None


def model_fn(model_dir: str, context: Any = None) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    served = served_as(config)
    if served is None:
        raise InferenceError(f"{model_dir} holds a {config.architectures}: served are speech recognition (CTC, "
                             "Whisper) and audio classification models", 500)
    if runtime() != "torch":
        return onnx_model_fn(model_dir, config, served)
    import torch
    import transformers

    device = os.environ.get("SPEECHKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    task, auto = served
    return pipeline_model(_loaded(getattr(transformers, auto), model_dir, device), model_dir, task, device)


def _loaded(auto, model_dir: str, device: str):
    """The PyTorch model, from safetensors only, in eval mode on `device`."""
    return auto.from_pretrained(model_dir, local_files_only=True, use_safetensors=True).to(device).eval()


def pipeline_model(model, model_dir: str, task: str, device: str) -> dict:
    """`model` (PyTorch, or a generating model around its ONNX sessions) in the stock pipeline of `task`, with
    the feature extractor and tokenizer it was trained with."""
    import torch
    from transformers import AutoFeatureExtractor, AutoTokenizer, pipeline

    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    # The tokenizer and the feature extractor passed as they are: a shipped n-gram LM (pyctcdecode, not installed in
    # the endpoint) is left out, so the endpoint decodes greedily.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True) if task != "audio-classification" \
        else None
    runs = pipeline(task, model=model, tokenizer=tokenizer, feature_extractor=feature_extractor,
                    device=torch.device(device))
    # A model of a fixed input window (Whisper) is fed longer audio in chunks of at most that window
    window = getattr(feature_extractor, "n_samples", None)
    return {"pipeline": runs, "model": model, "task": task, "sampling_rate": int(feature_extractor.sampling_rate),
            "min_samples": shortest_clip(model, feature_extractor),
            "window_s": window / feature_extractor.sampling_rate if window else None}


def shortest_clip(model, feature_extractor) -> int:
    """The shortest clip (samples) the model can take, so that a shorter one is refused with a 400 rather than
    failing inside the model: for a waveform encoder, its convolutions' receptive field by the model's own length
    arithmetic; for a filter-bank one, one 25 ms window, plus a 10 ms hop for each further frame it stacks into one
    input (w2v-BERT stacks two)."""
    import torch

    if model.main_input_name == "input_values" and hasattr(model, "_get_feat_extract_output_lengths"):
        def frames(samples: int) -> int:  # one length at a time: some models' arithmetic takes no batch (Moonshine)
            return int(model._get_feat_extract_output_lengths(torch.tensor(samples)))

        low, high = 1, 8000  # the fewest samples that give a frame: frames grow with samples
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if frames(middle) >= 1 else (middle + 1, high)
        return low
    return filter_bank_shortest(feature_extractor)


def filter_bank_shortest(feature_extractor) -> int:
    rate = int(feature_extractor.sampling_rate)
    return int(0.025 * rate) + (getattr(feature_extractor, "stride", 1) - 1) * int(0.010 * rate)


# ------------------------------------------------------------------------------------- model_fn: ONNX
def onnx_model_fn(model_dir: str, config, served: tuple) -> dict:
    """The model's ONNX export in an onnxruntime session, with the feature extractor and tokenizer it was trained
    with; no torch."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    task, auto = served
    device = os.environ.get("SPEECHKIT_DEVICE", "cpu")
    files = checked_onnx_files(model_dir, runtime())
    if auto == "AutoModelForSpeechSeq2Seq":  # a generating model: the stock pipeline, generating around the sessions
        import transformers

        model = onnx_generating(_loaded(transformers.AutoModelForSpeechSeq2Seq, model_dir, "cpu"), files, device)
        return {**pipeline_model(model, model_dir, task, "cpu"), "runtime": runtime()}
    session = onnx_session(files[-1], device)
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True) \
        if task != "audio-classification" else None
    inputs = [i.name for i in session.get_inputs()]
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if "input_values" in inputs and kernels:  # a waveform encoder: its convolutions' receptive field
        shortest = 1
        for kernel, stride in zip(reversed(kernels), reversed(strides)):
            shortest = (shortest - 1) * stride + kernel
    else:
        shortest = filter_bank_shortest(feature_extractor)
    return {"session": session, "inputs": inputs, "task": task, "config": config,
            "feature_extractor": feature_extractor, "tokenizer": tokenizer, "runtime": runtime(),
            "sampling_rate": int(feature_extractor.sampling_rate), "min_samples": shortest, "window_s": None}


# ------------------------------------------------------------------------------------------- predict_fn
def resample(array: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """FFmpeg's resampler (through an in-memory WAV), as speechkit's training data went through."""
    if source_rate == target_rate:
        return array
    import torch
    from torchcodec.decoders import AudioDecoder
    from torchcodec.encoders import AudioEncoder

    wav = AudioEncoder(torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0), sample_rate=source_rate)
    out = AudioDecoder(wav.to_tensor("wav"), sample_rate=target_rate).get_all_samples().data
    return out.numpy().reshape(-1).astype(np.float32, copy=False)


def predict_fn(data: dict, model: dict, context: Any = None) -> dict:
    rate = model["sampling_rate"]
    array = resample(data["array"], data["sampling_rate"], rate)
    duration = array.size / rate
    shortest = model.get("min_samples", 0)
    if array.size < shortest:
        raise InferenceError(f"audio of {array.size} samples ({1000 * duration:.1f} ms at {rate} Hz) is shorter than "
                             f"the model's receptive field ({shortest} samples, {1000 * shortest / rate:.0f} ms): "
                             "send a longer clip")
    chunk = _env_float("SPEECHKIT_CHUNK_LENGTH_S", 20.0)
    if model.get("window_s"):  # never more than the model's own window
        chunk = min(chunk, model["window_s"]) if chunk else model["window_s"]
    kwargs = {}
    if chunk and duration > chunk:  # long audio: overlapping chunks, CTC logits stitched by the pipeline
        stride = _env_float("SPEECHKIT_STRIDE_LENGTH_S", 4.0)
        if stride is not None and stride * 2 >= chunk:
            stride = chunk / 6
        kwargs = {"chunk_length_s": chunk, "stride_length_s": stride}
    onnx = "session" in model
    if model.get("task") == "audio-classification":  # the top labels with their scores, best first
        scores = onnx_labels(model, array) if onnx else model["pipeline"]({"raw": array, "sampling_rate": rate},
                                                                          top_k=5)
        return {"labels": [{"label": x["label"], "score": round(float(x["score"]), 6)} for x in scores],
                "duration_s": round(duration, 3)}
    if onnx:
        chunk, stride = kwargs.get("chunk_length_s"), kwargs.get("stride_length_s")
        text = onnx_transcript(model, array, chunk, stride if stride is not None else (chunk or 0) / 6)
    else:
        text = model["pipeline"]({"raw": array, "sampling_rate": rate}, **kwargs)["text"]
    return {"text": text, "duration_s": round(duration, 3), "chunked": bool(kwargs)}


def transform(body: Any, content_type: Optional[str], accept: Optional[str], model: dict):
    """input -> predict -> output, as the toolkit chains them."""
    return output_fn(predict_fn(input_fn(body, content_type), model), accept)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("imported by the SageMaker inference toolkit or by `python serve.py`; not run directly")
