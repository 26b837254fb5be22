"""ONNX export (export.py, speechkit/commands/export.py): a saved model's graph written with `torch.onnx.export`
(the dynamo exporter, through onnxscript), run by onnxruntime, optionally int8 (onnxruntime's dynamic quantization
of the linear layers).

`OnnxModel` wraps an onnxruntime session as the module the task's evaluation runs, so the exported model is scored
by exactly the code that scores the PyTorch one (the same batches, decoding and scores): that is the parity gate.

Exported so far: CTC speech recognition models (wav2vec2, HuBERT, WavLM, MMS, XLSR: `input_values` and
`attention_mask` in, `logits` out, batch and length axes dynamic). Other heads are refused in one line.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutput

from speechkit.config import ConfigError

log = logging.getLogger(__name__)
FOLDER = "onnx"  # <model_dir>/onnx/
FILES = {"none": "model.onnx", "int8": "model.int8.onnx"}
PARITY = "parity.json"
INPUTS = ("input_values", "attention_mask")
SHORTEST = 400  # samples the exported length axis starts at (the released wav2vec2 models' receptive field)
LONGEST = 16000 * 600  # 10 minutes at 16 kHz


class _Logits(torch.nn.Module):
    """The model's logits alone, from the two inputs (what the graph holds)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values, attention_mask):
        return self.model(input_values, attention_mask=attention_mask).logits


def check_exportable(head: str) -> None:
    if head != "ctc":
        raise ConfigError(f"model_dir: a {head} model; export.py exports CTC speech recognition models so far")


def export(model, path: str) -> str:
    """`model` (a CTC model, in eval mode) as ONNX at `path`, through a temporary file (a reader never sees half)."""
    model = model.eval()
    example = (torch.zeros(2, 16000), torch.ones(2, 16000, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1024)
    samples = torch.export.Dim("samples", min=SHORTEST, max=LONGEST)
    tmp = path + ".tmp"
    # The exporter and its graph optimizer narrate every step (hundreds of lines for wav2vec2): errors only
    chatty = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(_Logits(model).eval(), example, tmp, input_names=list(INPUTS),
                              output_names=["logits"], dynamic_shapes=({0: batch, 1: samples}, {0: batch, 1: samples}),
                              dynamo=True, external_data=False, verbose=False)
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    os.replace(tmp, path)
    return path


def quantize_int8(source: str, path: str) -> str:
    """Dynamic int8 quantization of the linear layers (MatMul, Gemm): weights stored as int8, activations quantized
    on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path + ".tmp"
    quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    os.replace(tmp, path)
    return path


class OnnxModel(torch.nn.Module):
    """An onnxruntime session in the place of the PyTorch model it was exported from: its config and length
    arithmetic are the reference model's, its logits the session's."""

    def __init__(self, path: str, reference, threads: Optional[int] = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.config = reference.config
        self.main_input_name = reference.main_input_name
        self._lengths = reference._get_feat_extract_output_lengths

    def _get_feat_extract_output_lengths(self, lengths):
        return self._lengths(lengths)

    def forward(self, input_values, attention_mask=None, labels=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones(input_values.shape, dtype=torch.long)
        logits = self.session.run(["logits"], {"input_values": input_values.float().cpu().numpy(),
                                               "attention_mask": attention_mask.long().cpu().numpy()})[0]
        return CausalLMOutput(loss=None, logits=torch.from_numpy(np.ascontiguousarray(logits)))
