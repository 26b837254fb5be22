"""ONNX export (export.py, speechkit/commands/export.py): a saved model's graph written with `torch.onnx.export`
(the dynamo exporter, through onnxscript), run by onnxruntime, optionally int8 (onnxruntime's dynamic quantization
of the linear layers).

`OnnxModel` wraps an onnxruntime session as the module the task's evaluation runs, so the exported model is scored
by exactly the code that scores the PyTorch one (the same batches, decoding and scores): that is the parity gate;
evaluate.py and transcribe.py run it the same way with `inference.runtime=onnx`.

Exported: the models whose head gives logits in one forward pass: CTC speech recognition (wav2vec2, HuBERT, WavLM,
MMS, XLSR), audio classification (wav2vec2-like, AST) and diarization frames; a family that cannot be exported yet
says why (its `onnx_refused`: w2v-BERT).
The graph's inputs are the family's model inputs (speechkit/models/base.py: ModelInputs) with the batch axis, and
the length axis where the family takes any length (AST's filter bank is a fixed window), dynamic; its output is
`logits`.

A generating model (Whisper, Moonshine) is three graphs (graph_files): its encoder (its main input: Whisper's
`input_features` of its fixed window, Moonshine's `input_values` of any length with their `attention_mask` ->
`last_hidden_state`, and for Moonshine the `encoder_attention_mask` of its frames, in encoder.onnx), every decoder
layer's cross-attention keys and values over those states (cross_kv.onnx, run once
per clip), and its decoder with the output projection (new `decoder_input_ids` and every layer's past keys and
values, and the encoder's frame mask where there is one -> `logits` and the new tokens' keys and values, in
model.onnx, whose parity record also holds the other
graphs' hashes). The handler's `onnx_generating` puts the sessions in the place of the model's encoder and forward
pass, with the keys and values in transformers' own cache, so `generate` (the prompt, the suppressed tokens,
timestamps, beams), and the stock pipeline around it, run unchanged; torch is needed around them.

The file names are the inference runtime's (speechkit/inference/onnx.py), whose handler serves these files too.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from transformers.utils import ModelOutput

from speechkit.config import ConfigError
from speechkit.inference.onnx import (ONNX_FILES, ONNX_FOLDER as FOLDER, PARITY_FILE as PARITY,  # noqa: F401
                                      WEIGHTS, checked_onnx_files, companion_files, onnx_generating, onnx_session,
                                      sha256)
from speechkit.inference.requests import InferenceError

log = logging.getLogger(__name__)
FILES = {"none": ONNX_FILES["onnx"], "int8": ONNX_FILES["onnx_int8"]}  # export.py's quantize= -> file
EXPORTED_HEADS = ("ctc", "classification", "frames", "seq2seq")
LONGEST_S = 600  # the length axis's upper bound: 10 minutes of audio


class _Logits(torch.nn.Module):
    """The model's logits alone, from its inputs in `names`' order (what the graph holds)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def check_exportable(config, key: str = "model_dir") -> None:
    """A model whose head or family export.py cannot export, refused in one line naming `key` (model_dir for
    export.py, inference.runtime=... for what runs an export)."""
    from speechkit.models import family_of, head_of

    head, family = head_of(config), family_of(config.model_type)
    if head not in EXPORTED_HEADS:
        raise ConfigError(f"{key}: a {head} model; export.py exports CTC, generating (Whisper, Moonshine), "
                          "classification and diarization models")
    if family.onnx_refused:
        raise ConfigError(f"{key}: a {family.name} model; {family.onnx_refused} (serve it with "
                          "inference.runtime=torch)")


def graph_files(model, path: str) -> list:
    """The files an export of `model` at `path` is made of: the file itself, and a Whisper's other graphs before it
    (companion_files: its encoder, its cross-attention's keys and values)."""
    return [*companion_files(path), path] if generates(model) else [path]


def generates(model) -> bool:
    """Whether the model generates (Whisper: an encoder and a decoder, three graphs) rather than giving logits in
    one pass."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


class _Encoder(torch.nn.Module):
    """The encoder's states of the model's main input (Whisper's window of features, Moonshine's waveform) and, for a
    family fed an attention mask (Moonshine), the encoder's mask of its frames, which the decoder's cross-attention
    takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, attention_mask=None):
        if attention_mask is None:
            return self.model.get_encoder()(inputs).last_hidden_state
        out = self.model.get_encoder()(inputs, attention_mask=attention_mask)
        return out.last_hidden_state, out.attention_mask


def _cache_names(layers: int, kinds=("self", "cross")) -> list:
    """Every decoder layer's keys and values, in the order the graphs take and give them."""
    return [f"{i}.{kind}.{part}" for i in range(layers) for kind in kinds for part in ("key", "value")]


class _CrossKV(torch.nn.Module):
    """Every decoder layer's cross-attention keys and values over the encoder's states: computed once per clip (its
    projections live in this graph alone), taken by every decoder step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, encoder_hidden_states):
        batch, frames = encoder_hidden_states.shape[:2]
        out = []
        for layer in self.model.get_decoder().layers:
            attention = layer.encoder_attn
            for projection in (attention.k_proj, attention.v_proj):  # as the attention shapes them: heads x dim
                out.append(projection(encoder_hidden_states).view(batch, frames, -1,
                                                                  attention.head_dim).transpose(1, 2))
        return tuple(out)


def decoder_layers(model) -> int:
    return len(model.get_decoder().layers)


def cache_config(model):
    """The model's config with one cache slot per decoder layer, as its decoder makes its cache."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = decoder_layers(model)
    return config


class _Decoder(torch.nn.Module):
    """The decoder and the output projection over new tokens, given every layer's keys and values: its
    self-attention's past and its cross-attention's (_CrossKV), and, for a family fed an attention mask, the
    encoder's mask of its frames (`masked`). The past always starts with one empty slot, masked out, so that a
    prompt (no past yet) and each later token run the same graph (an exported axis cannot be empty): logits, and the
    new tokens' own self-attention keys and values (the caller appends them to its cache)."""

    def __init__(self, model, masked: bool = False):
        super().__init__()
        self.model, self.masked = model, masked

    def forward(self, *inputs):  # the new tokens' ids, [the encoder's frame mask], every layer's keys and values
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        decoder_input_ids, past = inputs[0], inputs[1:]
        encoder_mask = None
        if self.masked:
            encoder_mask, past = past[0], past[1:]
        layers = decoder_layers(self.model)
        config = cache_config(self.model)
        cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        for i in range(layers):
            keys, values, cross_keys, cross_values = past[4 * i:4 * i + 4]
            cache.self_attention_cache.update(keys, values, i)
            cache.cross_attention_cache.update(cross_keys, cross_values, i)
            cache.is_updated[i] = True  # the cross-attention reads its keys and values from the cache
        batch, new = decoder_input_ids.shape
        slots = past[0].shape[2]  # the empty slot and the tokens before these
        positions = (torch.arange(new) + (slots - 1)).unsqueeze(0).expand(batch, -1)
        # each new token sees the tokens before it and itself, never the empty slot: an additive mask, as the eager
        # attention the export runs takes it
        seen = torch.arange(slots + new).unsqueeze(0)
        allowed = (seen >= 1) & (seen < slots + torch.arange(new).unsqueeze(1) + 1)
        mask = torch.zeros(new, slots + new).masked_fill(~allowed, torch.finfo(torch.float32).min)
        # encoder states are not read (the cache holds what the cross-attention needs), but their presence is what
        # turns the decoder's cross-attention on: a stand-in as long as the frames (its mask's length)
        width = self.model.get_decoder().embed_tokens.embedding_dim
        stand_in = past[2].new_zeros(batch, past[2].shape[2], width)
        extra = {} if encoder_mask is None else {"encoder_attention_mask": encoder_mask}
        out = self.model.get_decoder()(input_ids=decoder_input_ids, encoder_hidden_states=stand_in,
                                       past_key_values=cache, attention_mask=mask.expand(batch, 1, -1, -1),
                                       position_ids=positions, use_cache=True, **extra)
        present = []
        for own in out.past_key_values.self_attention_cache.layers:
            present += [own.keys[:, :, -new:], own.values[:, :, -new:]]
        return (self.model.get_output_embeddings()(out.last_hidden_state), *present)


def export(model, example: dict, path: str, lengths: Optional[Tuple[int, int]]) -> str:
    """`model` (in eval mode) as ONNX at `path`, through a temporary file (a reader never sees half). `example`:
    a batch of the model's inputs (at least two clips: an axis of size one would be fixed); `lengths`: (shortest,
    longest) of the length axis (axis 1), or None where it is fixed. A Whisper's other graphs go beside `path`
    (graph_files)."""
    model = model.eval()
    # Attention as plain matmuls and a softmax: SDPA exports with a NaN-safe softmax (IsNaN and Where over every
    # attention map) that cost onnxruntime about a quarter of wav2vec2-base's time (benchmarks/inference.py)
    attention = getattr(model.config, "_attn_implementation", None)
    switch = attention not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        if not generates(model):
            return _export(_Logits(model, example), example, path, _axes(example, lengths), ["logits"], True)
        from speechkit.models import family_of

        with family_of(model.config.model_type).exportable(model):
            return _export_generating(model, example, path, lengths)
    finally:
        if switch:
            model.set_attn_implementation(attention)


def _export_generating(model, example: dict, path: str, lengths: Optional[Tuple[int, int]]) -> str:
    """A generating model's three graphs: its encoder (encoder.onnx; with the encoder's frame mask for a family fed
    an attention mask), its cross-attention's keys and values (cross_kv.onnx), its decoder (model.onnx). The input
    length and the encoder's frames are dynamic where the family takes any length (Moonshine), fixed to the window
    where it does not (Whisper: `lengths` is None)."""
    from speechkit.models import family_of

    encoder, cross = companion_files(path)
    layers, longest = decoder_layers(model), family_of(model.config.model_type).decoder_positions(model.config)
    inputs = {model.main_input_name: example[model.main_input_name]}
    masked = "attention_mask" in example
    if masked:
        inputs["attention_mask"] = example["attention_mask"]
    _export(_Encoder(model), inputs, encoder, _axes(inputs, lengths),
            ["last_hidden_state", *(["encoder_attention_mask"] if masked else [])])
    with torch.no_grad():
        out = _Encoder(model)(*inputs.values())
        states, frame_mask = out if masked else (out, None)
        cross_kv = _CrossKV(model)(states)
    frames = torch.export.Dim("frames", min=1, max=100000) if lengths else None
    frames_axes = lambda: {0: torch.export.Dim("batch", min=1, max=1024), **({1: frames} if frames else {})}  # noqa
    _export(_CrossKV(model), {"encoder_hidden_states": states}, cross, (frames_axes(),),
            [f"cross.{n}" for n in _cache_names(layers, ("cross",))])
    # the decoder: batch, new tokens (a prompt's, or 1), past slots and (for any length) frames dynamic
    batch = states.shape[0]
    heads, dim = cross_kv[0].shape[1], cross_kv[0].shape[3]
    # traced as a prompt runs it: the empty slot alone, a tensor of its own for every input (the exporter takes one
    # tensor given twice for one input: every layer's past was then read from the first's, which the prompt, whose
    # past is empty, does not show, but every later step did; the test checks steps against PyTorch)
    def empty():
        return torch.zeros(batch, heads, 1, dim)

    past = {}
    for i in range(layers):
        past.update({f"past.{i}.self.key": empty(), f"past.{i}.self.value": empty(),
                     f"past.{i}.cross.key": cross_kv[2 * i], f"past.{i}.cross.value": cross_kv[2 * i + 1]})
    ids = torch.full((batch, 3), model.config.decoder_start_token_id, dtype=torch.long)
    example = {"decoder_input_ids": ids, **({"encoder_attention_mask": frame_mask.long()} if masked else {}), **past}
    dims = {"batch": torch.export.Dim("batch", min=1, max=1024),
            "new": torch.export.Dim("new", min=1, max=longest),
            "slots": torch.export.Dim("slots", min=1, max=longest)}
    dynamic = tuple({0: dims["batch"], **({1: dims["new"]} if name == "decoder_input_ids" else {}),
                     **({1: frames} if name == "encoder_attention_mask" and frames else {}),
                     **({2: dims["slots"]} if ".self." in name else {}),
                     **({2: frames} if ".cross." in name and frames else {})} for name in example)
    return _export(_Decoder(model, masked), example, path, dynamic,
                   ["logits", *(f"present.{n}" for n in _cache_names(layers, ("self",)))], True)


def _axes(example: dict, lengths: Optional[Tuple[int, int]], length_of: Optional[Tuple[str, ...]] = None) -> tuple:
    """Each input's dynamic axes: the batch (axis 0), and the length (axis 1) within `lengths` of the inputs
    `length_of` names (all of them when None; none when `lengths` is None)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=lengths[0], max=lengths[1]) if lengths else None
    return tuple({0: batch, **({1: length} if length is not None and (length_of is None or name in length_of)
                              else {})} for name in example)


def _export(graph: torch.nn.Module, example: dict, path: str, dynamic: tuple, outputs: list,
            star: bool = False) -> str:
    """`graph` (its inputs in `example`'s order) as ONNX at `path`, its outputs named `outputs`, with the dynamic
    axes `dynamic` (one dict per input); `star`: the graph takes its inputs as *inputs."""
    example = {k: v.long() if k == "attention_mask" else v for k, v in example.items()}  # int64, as fed
    tmp = path + ".tmp"
    # The exporter and its graph optimizer narrate every step (hundreds of lines for wav2vec2): errors only
    chatty = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="# The axis name")  # axes of one constraint share a name
            torch.onnx.export(graph.eval(), tuple(example.values()), tmp, input_names=list(example),
                              output_names=outputs,
                              # a graph taking *inputs has one entry for them all; the others one per input
                              dynamic_shapes=(dynamic,) if star else dynamic,
                              dynamo=True, external_data=False, verbose=False)
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    os.replace(tmp, path)
    return path


def quantize_int8(source: str, path: str, model) -> str:
    """Dynamic int8 quantization of the linear layers (MatMul, Gemm): weights stored as int8, activations quantized
    on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for source_file, file in zip(graph_files(model, source), graph_files(model, path)):  # a Whisper's three
        quantize_dynamic(source_file, file + ".tmp", weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(file + ".tmp", file)
    return path


def served_files(model_dir: str, runtime: str) -> list:
    """The checked ONNX files of `inference.runtime` (onnx, onnx_int8; a Whisper's three graphs), refused in
    one line (ConfigError) when missing, failed their parity check or older than the weights: the handler's own
    check."""
    try:
        return checked_onnx_files(model_dir, runtime)
    except InferenceError as err:
        raise ConfigError(err.message) from None


def for_runtime(model, model_dir: str, runtime: str):
    """What runs `model` (a saved model, loaded) under inference.runtime: itself (torch), or its checked ONNX export
    in its place (onnx, onnx_int8)."""
    if runtime == "torch":
        return model
    check_exportable(model.config, f"inference.runtime={runtime} (use inference.runtime=torch)")
    return exported_model(served_files(model_dir, runtime), model)


def exported_model(files: list, reference, keep_reference: bool = False):
    """The export (`files`: graph_files) in the place of `reference`: an OnnxModel, or for a generating model
    (Whisper) the reference itself with its encoder and forward pass run by the sessions (a copy of it when
    `keep_reference`: export.py's gate runs both)."""
    if not generates(reference):
        return OnnxModel(files[-1], reference)
    return onnx_generating(copy.deepcopy(reference) if keep_reference else reference, files)


@dataclass
class OnnxOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


class OnnxModel(torch.nn.Module):
    """An onnxruntime session in the place of the PyTorch model it was exported from: its config and length
    arithmetic are the reference model's, its logits the session's (on the CPU)."""

    def __init__(self, path: str, reference):
        super().__init__()
        self.session = onnx_session(path)
        self.names = [i.name for i in self.session.get_inputs()]
        self.config = reference.config
        self.main_input_name = reference.main_input_name
        # the reference's length arithmetic, which reads its config alone: taken from its class, so that the
        # PyTorch weights are not kept alive beside the session
        self._lengths = getattr(type(reference), "_get_feat_extract_output_lengths", None)
        if self._lengths is not None:
            self._get_feat_extract_output_lengths = lambda lengths, *a, **k: self._lengths(self, lengths, *a, **k)
        # where the model is, for code that asks its parameters (the session's inputs and outputs are on the CPU)
        self.placed = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, labels=None, **inputs):
        main = inputs[self.main_input_name]
        feed = {}
        for name in self.names:
            value = inputs.get(name)
            if name == "attention_mask":
                value = torch.ones(main.shape[:2], dtype=torch.long) if value is None else value
                feed[name] = value.long().cpu().numpy()
            else:
                feed[name] = value.float().cpu().numpy()
        logits = self.session.run(["logits"], feed)[0]
        return OnnxOutput(logits=torch.from_numpy(np.ascontiguousarray(logits)))
