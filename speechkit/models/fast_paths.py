"""Faster ways to compute the same model, applied in place to a built model before training (`trainer.fast_paths`).

Each keeps the model's function and its parameters (names, shapes, values), so checkpoints and the saved `model/`
are the stock Hugging Face ones, and each is here because `benchmarks/throughput.py`, run with and without them
(`--systems speechkit,trainer,speechkit_plain`), measured it paying (figures in docs/speed.md):

- **Time-major conv feature encoder** (wav2vec2 models whose conv layers have LayerNorms: the tiny one, XLSR-53;
  any device). The stock layers keep audio features as (batch, channels, time) and transpose them around every
  LayerNorm, so the GELU after it works on a strided view whose backward pass runs ~6x slower than on contiguous
  memory, and every layer copies its input. Here features stay (batch, time, channels) from the first layer to
  the last, and each convolution is the same sum of products computed as matrix products over kernel taps: a
  stride-s layer views its input as blocks of s time steps and adds one matmul per block its kernel spans.
- **Dropout masks from 16-bit draws** (training on the CPU only). torch's CPU dropout draws one 32-bit random
  number per element, through a serial generator, and costs ~100x the multiply it feeds; here one 64-bit draw
  gives four elements a 16-bit uniform each (keep probability exact to 1/65536, the scale matched to it).
  Attention dropout goes through the same masks; without dropout, or off the CPU, attention is the stock SDPA.
  Masks come from torch's CPU generator, so seeding, exact resume and gradient checkpointing's recomputation
  (which replays the generator) behave as with torch's dropout.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.models.wav2vec2 import modeling_wav2vec2 as w2v

ATTENTION = "speechkit_sdpa"  # the stock SDPA, with 16-bit-draw attention dropout while training on the CPU


def apply(model: nn.Module, device: torch.device, time_major: bool = True) -> list[str]:
    """Switch `model` (in place) to the fast paths that fit it (`time_major`: the conv feature encoder too, where its
    family says so: speechkit/models/); returns what was switched, for the log."""
    applied = []
    layers = [m for m in model.modules() if type(m) in _TIME_MAJOR and _fits_time_major(m.conv)] if time_major else []
    for layer in layers:
        layer.__class__ = _TIME_MAJOR[type(layer)]
    if layers:
        applied.append("time-major conv feature encoder")
    if device.type == "cpu":
        dropouts = [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
        for module in dropouts:
            module.__class__ = Dropout16
        if dropouts:
            applied.append(f"16-bit dropout masks ({len(dropouts)} layers)")
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa" \
                and getattr(config, "attention_dropout", 0) > 0:
            model.set_attn_implementation(ATTENTION)
            applied.append("attention dropout with 16-bit masks")
    return applied


# --------------------------------------------------------------------------------------- dropout (CPU)
def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask keeping each element with probability ~(1 - p), and that exact probability: four 16-bit
    uniforms per 64-bit draw of torch's default generator."""
    n = shape.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)  # every 64-bit value
    threshold = min(round(p * 65536), 65535)  # p in (0, 1): something is always kept
    mask = bits.view(torch.int16)[:n].view(shape) >= threshold - 32768
    return mask, 1 - threshold / 65536


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x * scale, 0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad * ctx.scale, 0), None, None


def dropout16(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout`, its masks drawn 16 bits at a time."""
    if not training or p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    mask, keep = keep_mask(x.shape, p)
    return _MaskedScale.apply(x, mask, 1 / keep)


class Dropout16(nn.Dropout):
    """nn.Dropout with `dropout16`'s masks (a class swap: no state of its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            raise ValueError("Dropout16 has no in-place mode")
        return dropout16(x, self.p, self.training)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA, except while training with attention dropout on the CPU (where torch's SDPA falls back to its math
    path anyway): the same math, its dropout masks from `keep_mask`."""
    if not (module.training and dropout > 0 and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's mask: True attends
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = dropout16(nn.functional.softmax(scores, dim=-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


# ------------------------------------------------------------------------------ time-major conv encoder
def _fits_time_major(conv: nn.Conv1d) -> bool:
    return conv.padding == (0,) and conv.dilation == (1,) and conv.groups == 1 and conv.padding_mode == "zeros"


def conv_time_major(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """`conv(x.transpose(1, 2)).transpose(1, 2)` for x of shape (batch, time, channels), without leaving that
    layout: the input is viewed as blocks of `stride` time steps, and block j of the kernel's taps is one matmul."""
    weight = conv.weight  # (out, in, kernel)
    out_ch, in_ch, kernel = weight.shape
    stride = conv.stride[0]
    batch, steps, _ = x.shape
    n = (steps - kernel) // stride + 1
    if n < 1:
        raise ValueError(f"input of {steps} steps is shorter than the kernel ({kernel})")
    spans = -(-kernel // stride)  # blocks of `stride` steps a kernel covers
    need = (n + spans - 1) * stride
    if need > steps:  # the last block is only partly used; pad so the input views as whole blocks
        x = nn.functional.pad(x, (0, 0, 0, need - steps))
    # Contiguous blocks, so each matmul below is one GEMM over all batch rows (a strided batch falls back to
    # per-sample bmm, slower than the convolution it replaces).
    blocks = x[:, :need].contiguous().view(batch, n + spans - 1, stride * in_ch)
    taps = weight.permute(2, 1, 0).reshape(kernel * in_ch, out_ch)  # row (tap, in channel)
    out = None
    for j in range(spans):  # block j of the taps, applied to every block, then shifted by j blocks
        width = min(stride, kernel - j * stride) * in_ch
        part = (blocks[..., :width] @ taps[j * stride * in_ch:j * stride * in_ch + width])[:, j:j + n]
        out = part if out is None else out + part
    return out if conv.bias is None else out + conv.bias


class TimeMajorLayerNormConvLayer(w2v.Wav2Vec2LayerNormConvLayer):
    """Takes and returns (batch, channels, time) as the stock layer does, but as a transposed view of
    (batch, time, channels) memory, so the next time-major layer reads it without a copy."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = conv_time_major(hidden_states.transpose(1, 2), self.conv)
        return self.activation(self.layer_norm(x)).transpose(1, 2)


# Layer-norm stacks only (the tiny model's, XLSR's): wav2vec2-base's norm-free layers have no transposes to save,
# and oneDNN's convolution ran their (frozen) forward pass 12% faster than these matmuls.
_TIME_MAJOR = {w2v.Wav2Vec2LayerNormConvLayer: TimeMajorLayerNormConvLayer}
