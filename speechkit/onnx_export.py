"""ONNX export (export.py; its parity gate: speechkit/parity.py): a saved model's graph written with `torch.onnx.export`
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

A head kind whose model does not give its output in one pass exports graphs of its own (its `export_graphs`): the
generation kind's three (speechkit/kinds/generation/graphs.py: encoder, cross-attention keys and values, a decoder
step over past keys and values), which the handler's `onnx_generating` runs around transformers' `generate`; torch
is needed around them.

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


def export(model, example: dict, path: str, lengths: Optional[Tuple[int, int]]) -> str:
    """`model` (in eval mode) as ONNX at `path`, through a temporary file (a reader never sees half). `example`:
    a batch of the model's inputs (at least two clips: an axis of size one would be fixed); `lengths`: (shortest,
    longest) of the length axis (axis 1), or None where it is fixed. A kind's other graphs (a generating model's) go
    beside `path` (graph_files)."""
    model = model.eval()
    # Attention as plain matmuls and a softmax: SDPA exports with a NaN-safe softmax (IsNaN and Where over every
    # attention map) that cost onnxruntime about a quarter of wav2vec2-base's time (benchmarks/inference.py)
    attention = getattr(model.config, "_attn_implementation", None)
    switch = attention not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        from speechkit.kinds import KINDS, kind_class
        from speechkit.models import family_of, head_of

        head = head_of(model.config)
        graphs = kind_class(head).export_graphs if head in KINDS else None
        if graphs is None:  # the logits of one forward pass
            return _export(_Logits(model, example), example, path, _axes(example, lengths), ["logits"], True)
        with family_of(model.config.model_type).exportable(model):  # the kind's own (generation: three graphs)
            return graphs(model, example, path, lengths, _export, _axes)
    finally:
        if switch:
            model.set_attn_implementation(attention)


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
    """An onnxruntime session in the place of the PyTorch model it was exported from: its config is the reference
    model's (its family's length arithmetic reads it), its logits the session's (on the CPU)."""

    def __init__(self, path: str, reference):
        super().__init__()
        self.session = onnx_session(path)
        self.names = [i.name for i in self.session.get_inputs()]
        self.config = reference.config
        self.main_input_name = reference.main_input_name
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
