"""The generation kind's ONNX graphs (export.py, through speechkit/onnx_export.py): a generating model (Whisper,
Moonshine) is three graphs (companion_files): its encoder (its main input: Whisper's `input_features` of its fixed
window, Moonshine's `input_values` of any length with their `attention_mask` -> `last_hidden_state`, and for
Moonshine the `encoder_attention_mask` of its frames, in encoder.onnx), every decoder layer's cross-attention keys and
values over those states (cross_kv.onnx, run once per clip), and its decoder with the output projection (new
`decoder_input_ids`, every layer's past keys and values, and the encoder's frame mask where there is one -> `logits`
and the new tokens' keys and values, in model.onnx, whose parity record also holds the other graphs' hashes). The
inference runtime's `onnx_generating` (speechkit/inference/onnx.py, in the handler) puts the sessions in the place of
the model's encoder and forward pass, with the keys and values in transformers' own cache, so `generate` (the prompt,
the suppressed tokens, timestamps, beams), and the stock pipeline around it, run unchanged."""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch

from speechkit.inference.onnx import companion_files


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


def cache_names(layers: int, kinds=("self", "cross")) -> list:
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


def export_graphs(model, example: dict, path: str, lengths: Optional[Tuple[int, int]], write, axes) -> str:
    """A generating model's three graphs: its encoder (encoder.onnx; with the encoder's frame mask for a family fed
    an attention mask), its cross-attention's keys and values (cross_kv.onnx), its decoder (model.onnx). The input
    length and the encoder's frames are dynamic where the family takes any length (Moonshine), fixed to the window
    where it does not (Whisper: `lengths` is None). `write(graph, example, path, dynamic, outputs, star)` and
    `axes(example, lengths)`: speechkit/onnx_export.py's exporter and dynamic axes."""
    from speechkit.models import family_of

    encoder, cross = companion_files(path)
    layers, longest = decoder_layers(model), family_of(model.config.model_type).decoder_positions(model.config)
    inputs = {model.main_input_name: example[model.main_input_name]}
    masked = "attention_mask" in example
    if masked:
        inputs["attention_mask"] = example["attention_mask"]
    write(_Encoder(model), inputs, encoder, axes(inputs, lengths),
          ["last_hidden_state", *(["encoder_attention_mask"] if masked else [])])
    with torch.no_grad():
        out = _Encoder(model)(*inputs.values())
        states, frame_mask = out if masked else (out, None)
        cross_kv = _CrossKV(model)(states)
    frames = torch.export.Dim("frames", min=1, max=100000) if lengths else None
    frames_axes = lambda: {0: torch.export.Dim("batch", min=1, max=1024), **({1: frames} if frames else {})}  # noqa
    write(_CrossKV(model), {"encoder_hidden_states": states}, cross, (frames_axes(),),
          [f"cross.{n}" for n in cache_names(layers, ("cross",))])
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
    return write(_Decoder(model, masked), example, path, dynamic,
                 ["logits", *(f"present.{n}" for n in cache_names(layers, ("self",)))], True)
