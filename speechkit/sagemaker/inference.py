"""The inference handler: SageMaker's Hugging Face/PyTorch toolkit contract, shipped as `code/inference.py`.

    model_fn(model_dir)                 -> the model and its pipeline: speech recognition for a CTC model,
                                           audio classification for a classifier, whatever its family
    input_fn(body, content_type)        -> a mono clip, from JSON {"speech_array": [...], "sampling_rate": N}
                                           or from raw audio bytes (audio/wav, audio/flac, audio/x-audio, ...)
    predict_fn(clip, model)             -> {"text": ..., "duration_s": ...}; resampled to the model's rate, long
                                           audio transcribed in overlapping chunks; a classifier answers
                                           {"labels": [{"label", "score"}, ...top 5], "duration_s": ...}
    output_fn(prediction, accept)       -> JSON: that object, or with SPEECHKIT_RESPONSE=transcript the bare
                                           transcript as a JSON string (what the AWS recipe's endpoint answers)

It is self-contained (numpy, torch, torchcodec, transformers; nothing from speechkit), so the same file runs in the
endpoint's container, in `python serve.py` on this machine, and in the tests. Requests that cannot be served raise
`InferenceError` with an HTTP status and a message saying what is wrong. Nothing here unpickles input or trusts
remote code: bodies are parsed as JSON or decoded as audio by FFmpeg, and the model loads from safetensors only,
through the transformers Auto class of its head (SERVED).

Settings come from the environment (set on the SageMaker model by deploy.py, and by serve.py):
SPEECHKIT_MAX_BODY_MB (6), SPEECHKIT_MAX_AUDIO_S (300; none: no limit), SPEECHKIT_CHUNK_LENGTH_S (20; 0/none:
never chunk), SPEECHKIT_STRIDE_LENGTH_S (4; none: chunk/6), SPEECHKIT_RESPONSE (details; or transcript),
SPEECHKIT_DEVICE (cuda when available, else cpu), SPEECHKIT_RUNTIME (torch; onnx or onnx_int8: the model's export in
<model_dir>/onnx/, made and checked by export.py, run by onnxruntime).

With an ONNX runtime a CTC model or a classifier runs without torch: features by the feature extractor in numpy,
the graph by onnxruntime, CTC frames decoded by the tokenizer, a classifier's scores by numpy. A Whisper export (its
three graphs) needs torch: the stock pipeline and transformers' `generate` run around its sessions
(`onnx_generating`), so its answers are made as the PyTorch model's are. torch is still imported for
audio files and for JSON at another rate (FFmpeg's decoder and resampler come through torchcodec); JSON at the
model's own rate touches no torch at all. The ONNX file is served only if export.py's parity record says it passed
and was made from the weights the folder holds now, so what is served is what was scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Optional

import numpy as np

JSON_TYPES = ("application/json",)
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "audio/x-audio",
               "audio/mpeg", "audio/mp3", "audio/ogg", "audio/webm")
ACCEPT_TYPES = ("application/json", "*/*")


class InferenceError(ValueError):
    """A request that cannot be served; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _env_float(name: str, default: Optional[float]) -> Optional[float]:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in ("", "none", "null"):
        return None
    return float(value)


def max_body_bytes() -> int:
    return int((_env_float("SPEECHKIT_MAX_BODY_MB", 6.0) or 6.0) * 1024 * 1024)


def max_audio_s() -> Optional[float]:
    """The longest audio a request may hold (a few MB of compressed audio, or of JSON at a low rate, can be hours).
    Checked from the sample count or the file's header before decoding, and decoding stops there regardless."""
    return _env_float("SPEECHKIT_MAX_AUDIO_S", 300.0)


def _too_long(seconds: float, limit: float, bound: str = "") -> InferenceError:
    """`bound`: "at least ", "more than " when `seconds` is a bound, not the duration."""
    return InferenceError(f"audio of {bound}{seconds:.1f} s is over the limit of {limit:g} s (SPEECHKIT_MAX_AUDIO_S / "
                          "inference.max_audio_s): send it in shorter parts", 413)


def _media_type(value: Optional[str]) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------------------------- model_fn
# What a model is served as, by the head its config's architectures name: the pipeline (the speechkit task's own
# pipeline tag, speechkit/tasks/), the transformers Auto class that loads it and its list of architectures. Any model
# family transformers has these heads for is served alike (wav2vec2, HuBERT, WavLM, w2v-BERT, Whisper, AST ...).
SERVED = [("automatic-speech-recognition", "AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES"),
          ("automatic-speech-recognition", "AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
          ("audio-classification", "AutoModelForAudioClassification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES")]


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
    """`model` (PyTorch, or a Whisper generating around its ONNX sessions) in the stock pipeline of `task`, with
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
        frames = model._get_feat_extract_output_lengths(torch.arange(1, 8001))
        return int(torch.nonzero(frames >= 1)[0, 0]) + 1
    return filter_bank_shortest(feature_extractor)


def filter_bank_shortest(feature_extractor) -> int:
    rate = int(feature_extractor.sampling_rate)
    return int(0.025 * rate) + (getattr(feature_extractor, "stride", 1) - 1) * int(0.010 * rate)


# ------------------------------------------------------------------------------------- model_fn: ONNX
# What export.py writes (speechkit/onnx_export.py takes these names from here: they are stated once)
ONNX_FOLDER = "onnx"  # <model_dir>/onnx/
ONNX_FILES = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}  # inference.runtime -> its file there
PARITY_FILE = "parity.json"  # {file name: the parity gate's figures, with the hashes of the file and the weights}
WEIGHTS = "model.safetensors"
RUNTIMES = ("torch", *ONNX_FILES)


def runtime() -> str:
    value = os.environ.get("SPEECHKIT_RUNTIME", "torch")
    if value not in RUNTIMES:
        raise InferenceError(f"SPEECHKIT_RUNTIME={value} (inference.runtime): one of {', '.join(RUNTIMES)}", 500)
    return value


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A Whisper export is three graphs: model.onnx (its decoder, which takes past keys and values) and, beside it, these
# (model.int8.onnx beside encoder.int8.onnx, ...)
ENCODER, CROSS = "encoder", "cross_kv"


def companion_files(path: str) -> list:
    """A Whisper export's other graphs, beside its decoder's at `path` (model.onnx -> encoder.onnx, cross_kv.onnx;
    model.int8.onnx -> encoder.int8.onnx, ...): its encoder, and its cross-attention's keys and values over the
    encoder's states (computed once per clip)."""
    folder, name = os.path.split(path)
    return [os.path.join(folder, role + name[len("model"):]) for role in (ENCODER, CROSS)]


def checked_onnx_files(model_dir: str, runtime: str) -> list:
    """The ONNX files `runtime` names, served only as export.py left them: there, their parity record passed, the
    files the ones that were scored (one for most models; a Whisper's three: companion_files, then model.onnx) and
    the weights beside them the ones they were made from (a retrained model/ with a stale export is refused, not
    served)."""
    name = ONNX_FILES[runtime]
    path = os.path.join(model_dir, ONNX_FOLDER, name)
    export = f"python export.py model_dir={model_dir}" + (" quantize=int8" if runtime == "onnx_int8" else "")
    if not os.path.isfile(path):
        raise InferenceError(f"inference.runtime={runtime}: {path} is not there; export the model first: {export}",
                             500)
    parity = os.path.join(model_dir, ONNX_FOLDER, PARITY_FILE)
    try:
        with open(parity) as f:
            record = json.load(f).get(name) or {}
    except (OSError, ValueError, AttributeError):
        record = {}
    if not record.get("passed"):
        raise InferenceError(f"inference.runtime={runtime}: {parity} has no passed parity check of {name}; export "
                             f"it again: {export}", 500)
    weights = os.path.join(model_dir, WEIGHTS)
    if record.get("sha256") != sha256(path) or (
            os.path.isfile(weights) and record.get("weights_sha256") != sha256(weights)):
        raise InferenceError(f"inference.runtime={runtime}: {path} is not the file export.py checked against the "
                             f"weights beside it (one of them changed since); export it again: {export}", 500)
    config_file = os.path.join(model_dir, "config.json")
    with open(config_file) as f:
        generates = bool(json.load(f).get("is_encoder_decoder"))
    if not generates:
        return [path]
    wanted = record.get("companion_sha256") or {}
    for companion in companion_files(path):
        if not os.path.isfile(companion) or sha256(companion) != wanted.get(os.path.basename(companion)):
            raise InferenceError(f"inference.runtime={runtime}: {companion} is not the graph export.py checked with "
                                 f"{path}; export it again: {export}", 500)
    return [*companion_files(path), path]


def onnx_session(path: str, device: str = "cpu", spinning: bool = True):
    """An onnxruntime session of `path` (on CUDA where `device` says so and onnxruntime has it), as the handler,
    export.py's parity gate, evaluate.py and transcribe.py run an export. `spinning`: whether its threads spin
    waiting for work after a run (onnxruntime's default, for back-to-back runs; off where PyTorch works between
    runs, as around a Whisper's decoder steps, whose threads the spinning would starve)."""
    import onnxruntime as ort

    wanted = "CUDAExecutionProvider" if device.startswith("cuda") else None
    providers = [p for p in (wanted, "CPUExecutionProvider") if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    # No memory pattern: planned for each input shape, it holds every activation buffer of the largest request at
    # once (wav2vec2-base int8 on 4 x 20 s: 3.4 GB peak with it, 1.8 GB without, the same speed)
    options.enable_mem_pattern = False
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=providers)


class _EncoderSession:
    """A Whisper export's encoder session as the encoder `generate` asks the model for (`get_encoder()`)."""

    def __init__(self, session, reference):
        self.session, self.config = session, reference.config
        self.main_input_name = getattr(reference, "main_input_name", "input_features")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, input_features=None, attention_mask=None, **_):
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        states = self.session.run(["last_hidden_state"], {"input_features": input_features.float().cpu().numpy()})[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.ascontiguousarray(states)).to(
            input_features.device))


def onnx_generating(model, files: list, device: str = "cpu"):
    """A Whisper model (PyTorch, loaded) whose encoder and forward pass become its export's sessions (`files`, as
    checked_onnx_files gives them: encoder, cross-attention keys and values, decoder): transformers' `generate`, and
    so the stock pipeline, runs around them as around the PyTorch ones (the prompt, suppressed tokens, timestamps,
    beams). Past keys and values are kept as the PyTorch model keeps them, in an EncoderDecoderCache (which beam
    search reorders): the cross-attention's computed once per clip, and each step runs the decoder on the new token
    alone. The PyTorch layers the sessions stand in for are dropped (only the embeddings, the convolutions' shapes
    and the config stay), so the served process does not hold both."""
    import copy
    import types

    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import Seq2SeqLMOutput
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    encoder = _EncoderSession(onnx_session(files[0], device, spinning=False), model.get_encoder())
    cross, decoder = (onnx_session(f, device, spinning=False) for f in files[1:])
    layers = model.config.decoder_layers
    cache_config = copy.deepcopy(model.config)
    cache_config.num_hidden_layers = layers  # one slot per decoder layer, as the PyTorch decoder makes it

    def get_encoder(*_, **__):
        return encoder

    def forward(self, input_features=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                past_key_values=None, use_cache=None, labels=None, **_):
        if encoder_outputs is None:
            encoder_outputs = encoder(input_features)
        states = encoder_outputs[0]
        if decoder_input_ids is None and labels is not None:  # teacher forcing, as the PyTorch model does
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        like = decoder_input_ids
        if past_key_values is None or past_key_values.get_seq_length() == 0:  # a prompt: the clip's cross keys
            cache = EncoderDecoderCache(DynamicCache(config=cache_config), DynamicCache(config=cache_config))
            kv = cross.run(None, {"encoder_hidden_states": states.float().cpu().numpy()})
            for i in range(layers):
                cache.cross_attention_cache.update(torch.from_numpy(kv[2 * i]).to(like.device),
                                                   torch.from_numpy(kv[2 * i + 1]).to(like.device), i)
                cache.is_updated[i] = True
        else:
            cache = past_key_values
        feed = {"decoder_input_ids": like.long().cpu().numpy()}
        batch = like.shape[0]
        for i in range(layers):
            cross_layer = cache.cross_attention_cache.layers[i]
            heads, dim = cross_layer.keys.shape[1], cross_layer.keys.shape[3]
            empty = np.zeros((batch, heads, 1, dim), np.float32)  # the decoder's masked first slot
            own = cache.self_attention_cache.layers[i]  # one per layer (cache_config); empty before the prompt
            for part in ("key", "value"):
                past = getattr(own, part + "s")
                feed[f"past.{i}.self.{part}"] = empty if past is None or past.numel() == 0 else \
                    np.concatenate([empty, past.cpu().numpy()], axis=2)
                feed[f"past.{i}.cross.{part}"] = getattr(cross_layer, part + "s").cpu().numpy()
        logits, *present = decoder.run(None, feed)
        for i in range(layers):
            cache.self_attention_cache.update(torch.from_numpy(present[2 * i]).to(like.device),
                                              torch.from_numpy(present[2 * i + 1]).to(like.device), i)
        return Seq2SeqLMOutput(logits=torch.from_numpy(logits).to(like.device), past_key_values=cache,
                               encoder_last_hidden_state=states)

    model.model.encoder.layers = torch.nn.ModuleList()
    model.model.decoder.layers = torch.nn.ModuleList()
    model.get_encoder = get_encoder
    model.model.get_encoder = get_encoder
    model.forward = types.MethodType(forward, model)
    return model


def onnx_model_fn(model_dir: str, config, served: tuple) -> dict:
    """The model's ONNX export in an onnxruntime session, with the feature extractor and tokenizer it was trained
    with; no torch."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    task, auto = served
    device = os.environ.get("SPEECHKIT_DEVICE", "cpu")
    files = checked_onnx_files(model_dir, runtime())
    if auto == "AutoModelForSpeechSeq2Seq":  # Whisper: the stock pipeline, generating around the sessions
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


def onnx_outputs(model: dict, clip: np.ndarray) -> np.ndarray:
    """The graph's first output (logits) for one clip, features made by the feature extractor (numpy)."""
    features = model["feature_extractor"](clip, sampling_rate=model["sampling_rate"], return_tensors="np",
                                          return_attention_mask=True)
    feed = {name: np.asarray(features[name], dtype=np.int64 if name == "attention_mask" else np.float32)
            for name in model["inputs"]}
    return model["session"].run(None, feed)[0][0]


def onnx_transcript(model: dict, array: np.ndarray, chunk_s: Optional[float], stride_s: float) -> str:
    """A CTC model's transcript: the clip whole, or in the stock pipeline's chunks (the same windows, whose
    `stride_s` of context on each side is heard but whose frames are dropped, in the same arithmetic, so both
    runtimes answer alike), the frames' argmax joined and decoded once by the tokenizer."""
    rate, align = model["sampling_rate"], getattr(model["config"], "inputs_to_logits_ratio", 1)
    if not chunk_s:
        ids = onnx_outputs(model, array).argmax(-1)
    else:
        chunk = int(round(chunk_s * rate / align) * align)
        stride = int(round(stride_s * rate / align) * align)
        parts = []
        for start in range(0, array.size, chunk - 2 * stride):
            window = array[start:start + chunk]
            left = 0 if start == 0 else stride
            last = start + chunk >= array.size
            right = 0 if last else stride
            if window.size > left:
                frames = onnx_outputs(model, window).argmax(-1)
                n = int(round(window.size / align))  # the pipeline's rescale_stride
                parts.append(frames[int(round(left / window.size * n)):n - int(round(right / window.size * n))])
            if last:
                break
        ids = np.concatenate(parts)
    # as the stock pipeline decodes CTC: the blank (pad) separates repeats before it is dropped, so it is not skipped
    return model["tokenizer"].decode(ids.tolist())


def onnx_labels(model: dict, array: np.ndarray, top: int = 5) -> list:
    """A classifier's top labels: softmax of the logits (sigmoid for a multi-label model), best first."""
    logits = onnx_outputs(model, array).astype(np.float64)
    if model["config"].problem_type == "multi_label_classification":
        scores = 1 / (1 + np.exp(-logits))
    else:
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
    best = np.argsort(-scores)[:top]
    return [{"label": model["config"].id2label[int(i)], "score": float(scores[i])} for i in best]


# --------------------------------------------------------------------------------------------- input_fn
def input_fn(input_data: Any, content_type: Optional[str], context: Any = None) -> dict:
    """The request body as {"array": mono float32, "sampling_rate": its rate}; raises InferenceError."""
    media = _media_type(content_type)
    if media not in JSON_TYPES + AUDIO_TYPES:
        raise InferenceError(f"unsupported content type '{content_type}': send application/json "
                             f"({{\"speech_array\": [...], \"sampling_rate\": N}}) or audio bytes "
                             f"({', '.join(AUDIO_TYPES)})", 415)
    body = input_data.encode() if isinstance(input_data, str) else bytes(input_data or b"")
    limit = max_body_bytes()
    if len(body) > limit:
        raise InferenceError(f"request body of {len(body)} bytes is over the limit of {limit} bytes "
                             "(SPEECHKIT_MAX_BODY_MB / inference.max_body_mb)", 413)
    if not body:
        raise InferenceError("empty request body: no audio")
    clip = _from_json(body) if media in JSON_TYPES else _from_audio_bytes(body)
    if clip["array"].size == 0:
        raise InferenceError("empty audio: no samples")
    return clip


def _not_a_number(constant: str):
    raise InferenceError(f"malformed JSON: {constant} is not a JSON number (samples and rate must be finite)")


_RATE = re.compile(rb'"sampling_rate"\s*:\s*(\d{4,6})(?![\d.eE])')
_ARRAY = re.compile(rb'"speech_array"\s*:\s*\[')


def _too_long_before_parsing(body: bytes) -> None:
    """A large body's duration from its bytes, before json.loads (which takes a tenth of a second per 4 MB and
    holds the interpreter meanwhile): the rate, and at least as many samples as there are commas in the array
    before its first `]` (plus one). Refused only when even that lower bound is over the limit."""
    limit = max_audio_s()
    last = body.rfind(b'"sampling_rate"')  # json.loads keeps the last of repeated keys
    found = _RATE.match(body, last) if last >= 0 else None
    rate = int(found.group(1)) if found else 0
    array = _ARRAY.search(body)
    if not (limit and array and 1000 <= rate <= 384000):
        return
    end = body.find(b"]", array.end())
    samples = body.count(b",", array.end(), end if end >= 0 else len(body)) + 1
    if samples / rate > limit:
        raise _too_long(samples / rate, limit, "at least ")


def _from_json(body: bytes) -> dict:
    if len(body) > 256 * 1024:
        _too_long_before_parsing(body)
    try:
        payload = json.loads(body, parse_constant=_not_a_number)  # NaN, Infinity: Python's extension, not JSON
    except InferenceError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InferenceError(f"malformed JSON: {err}") from None
    except RecursionError:
        raise InferenceError("malformed JSON: nested too deeply") from None
    except ValueError as err:  # an integer literal longer than Python converts (4300 digits)
        raise InferenceError(f"malformed JSON: {str(err).split(';')[0]}") from None
    if not isinstance(payload, dict):
        raise InferenceError("the JSON body must be an object {\"speech_array\": [...], \"sampling_rate\": N}")
    missing = [k for k in ("speech_array", "sampling_rate") if k not in payload]
    if missing:
        raise InferenceError(f"missing field(s) {', '.join(missing)}: send "
                             "{\"speech_array\": [floats], \"sampling_rate\": N}")
    rate = payload["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != int(rate) or not 1000 <= rate <= 384000:
        raise InferenceError(f"sampling_rate must be a whole number of Hz between 1000 and 384000, got {rate!r}")
    samples = payload["speech_array"]
    if not isinstance(samples, list):
        raise InferenceError("speech_array must be a list of numbers (one channel)")
    if not samples:
        raise InferenceError("empty audio: speech_array has no samples")
    limit = max_audio_s()
    if limit and len(samples) / rate > limit:  # from the count, before any sample is looked at
        raise _too_long(len(samples) / rate, limit)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in samples):
        raise InferenceError("speech_array must hold numbers only (one channel: a flat list)")
    try:
        with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused below
            array = np.asarray(samples, dtype=np.float32)
    except OverflowError:  # an integer too large for a float
        raise InferenceError("speech_array holds a number too large for a sample") from None
    if not np.all(np.isfinite(array)):
        raise InferenceError("speech_array holds NaN or infinite values")
    return {"array": array, "sampling_rate": int(rate)}


def _from_audio_bytes(body: bytes) -> dict:
    from torchcodec.decoders import AudioDecoder

    limit = max_audio_s()
    try:
        decoder = AudioDecoder(body, num_channels=1)
        declared = decoder.metadata.duration_seconds_from_header
        if limit and declared and declared > limit:  # refused from the header, nothing decoded
            raise _too_long(declared, limit)
        # Decoded up to just past the limit at most: a header that says less (or nothing) cannot make it more.
        samples = decoder.get_samples_played_in_range(stop_seconds=limit + 1) if limit else decoder.get_all_samples()
    except InferenceError:
        raise
    except Exception as err:  # FFmpeg's errors come in several types; all mean "not audio we can read"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "No audio frames" in str(err) or "No samples" in str(err):
            raise InferenceError(f"empty audio: the file holds no samples ({detail})") from None
        raise InferenceError(f"the body is not audio that can be decoded ({detail})") from None
    if limit and samples.duration_seconds > limit:
        raise _too_long(limit, limit, "more than ")
    return {"array": samples.data.numpy().reshape(-1).astype(np.float32, copy=False),
            "sampling_rate": int(samples.sample_rate)}


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


# -------------------------------------------------------------------------------------------- output_fn
def output_fn(prediction: dict, accept: Optional[str] = None, context: Any = None):
    media = _media_type(accept) or "application/json"
    if media not in ACCEPT_TYPES:
        raise InferenceError(f"unsupported accept type '{accept}': responses are application/json", 406)
    if os.environ.get("SPEECHKIT_RESPONSE", "details") == "transcript":  # a classifier's: its top label
        bare = prediction["text"] if "text" in prediction else prediction["labels"][0]["label"]
        return json.dumps(bare, ensure_ascii=False)
    return json.dumps(prediction, ensure_ascii=False, allow_nan=False)


def transform(body: Any, content_type: Optional[str], accept: Optional[str], model: dict):
    """input -> predict -> output, as the toolkit chains them."""
    return output_fn(predict_fn(input_fn(body, content_type), model), accept)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("imported by the SageMaker inference toolkit or by `python serve.py`; not run directly")
