"""The ONNX runtime: the files export.py writes and the checks before one is served, its onnxruntime sessions, and
the answers made from them.

- the file names (ONNX_FOLDER, ONNX_FILES, PARITY_FILE: speechkit/onnx_export.py takes them from here, so they are
  stated once) and `checked_onnx_files`: an export is served only if its parity record (export.py's gate) passed and
  the hashes of the file, its companion graphs and the weights beside it are the ones scored;
- `onnx_session`: a session as the handler, the parity gate, evaluate.py and transcribe.py run an export;
- `onnx_generating`: a generating model (Whisper, Moonshine) whose encoder and forward pass are its export's three
  sessions, so that transformers' `generate` and the stock pipeline run around them;
- `onnx_transcript`, `onnx_labels`: a CTC model's transcript and a classifier's top labels with numpy alone.

Bundled into the handler (code/inference.py, bundle.py): numpy and the standard library at the top, onnxruntime,
torch and transformers inside the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Optional

import numpy as np

from speechkit.inference.requests import InferenceError

# ------------------------------------------------------------------------------------------ the files
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


# A generating export (Whisper, Moonshine) is three graphs: model.onnx (its decoder, which takes past keys and
# values) and, beside it, these
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
    """A generating export's encoder session as the encoder `generate` asks the model for (`get_encoder()`): its
    main input (Whisper's window of features, Moonshine's waveform) and, where the graph takes one, the attention
    mask, to the encoder's states (and, then, its mask of the frames the decoder's cross-attention reads)."""

    def __init__(self, session, reference):
        self.session, self.config = session, reference.config
        self.main_input_name = getattr(reference, "main_input_name", "input_features")
        self.names = [i.name for i in session.get_inputs()]

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, inputs=None, attention_mask=None, **kwargs):
        import torch

        inputs = kwargs.get(self.main_input_name) if inputs is None else inputs
        feed = {self.main_input_name: inputs.float().cpu().numpy()}
        if "attention_mask" in self.names:
            mask = torch.ones(inputs.shape[:2], dtype=torch.long) if attention_mask is None else attention_mask
            feed["attention_mask"] = mask.long().cpu().numpy()
        out = self.session.run(None, feed)
        states = torch.from_numpy(np.ascontiguousarray(out[0])).to(inputs.device)
        frames = torch.from_numpy(out[1]).to(inputs.device) if len(out) > 1 else None
        return _encoder_output()(last_hidden_state=states, attention_mask=frames)


@functools.lru_cache(maxsize=None)
def _encoder_output():
    """The encoder's output type: transformers' BaseModelOutput and the mask of its frames (None where there is
    none), a ModelOutput generate() expands for beams like the model's own."""
    import dataclasses

    import torch
    from transformers.modeling_outputs import BaseModelOutput

    # made, not declared: a dataclass declared here would read its string annotations through sys.modules, which
    # code/inference.py, imported from a file by the container, need not be in
    return dataclasses.make_dataclass("EncoderOutput", [("attention_mask", Optional[torch.Tensor], None)],
                                      bases=(BaseModelOutput,))


def onnx_generating(model, files: list, device: str = "cpu"):
    """A generating model (Whisper, Moonshine; PyTorch, loaded) whose encoder and forward pass become its export's
    sessions (`files`, as checked_onnx_files gives them: encoder, cross-attention keys and values, decoder):
    transformers' `generate`, and so the stock pipeline, runs around them as around the PyTorch ones (the prompt,
    suppressed tokens, timestamps, beams). Past keys and values are kept as the PyTorch model keeps them, in an
    EncoderDecoderCache (which beam search reorders): the cross-attention's computed once per clip, and each step
    runs the decoder on the new token alone; a decoder graph that takes the encoder's frame mask (a family fed an
    attention mask: Moonshine) is given it. The PyTorch layers the sessions stand in for are dropped (only the
    embeddings, the convolutions' shapes and the config stay), so the served process does not hold both."""
    import copy
    import types

    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import Seq2SeqLMOutput

    encoder = _EncoderSession(onnx_session(files[0], device, spinning=False), model.get_encoder())
    cross, decoder = (onnx_session(f, device, spinning=False) for f in files[1:])
    masked = "encoder_attention_mask" in {i.name for i in decoder.get_inputs()}
    layers = len(model.get_decoder().layers)
    cache_config = copy.deepcopy(model.config)
    cache_config.num_hidden_layers = layers  # one slot per decoder layer, as the PyTorch decoder makes it

    def get_encoder(*_, **__):
        return encoder

    def forward(self, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, past_key_values=None,
                use_cache=None, labels=None, **inputs):
        if encoder_outputs is None:
            encoder_outputs = encoder(inputs[encoder.main_input_name], attention_mask=attention_mask)
        states = encoder_outputs[0]
        if decoder_input_ids is None and labels is not None:  # teacher forcing, as the PyTorch model does
            decoder_input_ids = labels.new_full(labels.shape, self.config.decoder_start_token_id)
            decoder_input_ids[:, 1:] = labels[:, :-1]
            decoder_input_ids.masked_fill_(decoder_input_ids == -100, self.config.pad_token_id)
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
        if masked:
            frames = getattr(encoder_outputs, "attention_mask", None)
            feed["encoder_attention_mask"] = np.ones(states.shape[:2], np.int64) if frames is None else \
                frames.long().cpu().numpy()
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

    model.get_encoder().layers = torch.nn.ModuleList()
    model.get_decoder().layers = torch.nn.ModuleList()
    model.get_encoder = get_encoder
    model.model.get_encoder = get_encoder
    model.forward = types.MethodType(forward, model)
    return model


# ------------------------------------------------------------------------------------- ONNX answers
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
