"""ESPnet's hybrid CTC/attention training for a generating model (task.whisper_ctc_weight): a linear CTC layer over
the encoder's frames, trained with the model and kept in its checkpoints, never shipped; the loss is (1 - w) x the
decoder's + w x CTC of the encoder's frames against the transcript's text tokens (the tokenizer's end of text as the
blank). It helps a model trained from scratch find the alignment sooner."""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional


def attach_ctc_layer(model) -> None:
    """A linear CTC layer over the encoder's frames, never shipped (save_pretrained leaves it out). Its logits are
    computed inside the model's forward (a forward hook), so that DDP sees the layer used, and only while training:
    generation and the evaluation's loss are the plain model's."""
    import torch

    width = getattr(model.config, "d_model", None) or model.config.hidden_size
    model.ctc_head = torch.nn.Linear(width, model.config.vocab_size)
    model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | {"ctc_head.weight", "ctc_head.bias"}
    model.register_forward_hook(_ctc_logits)


def _ctc_logits(model, args, out):
    if model.training and getattr(out, "encoder_last_hidden_state", None) is not None:
        # a type of its own with the extra field, which DDP can rebuild from the output's fields
        return _with_ctc_logits(type(out))(**out, ctc_logits=model.ctc_head(out.encoder_last_hidden_state))
    return out


@functools.lru_cache(maxsize=None)
def _with_ctc_logits(output_type):
    import torch

    return dataclasses.make_dataclass(f"{output_type.__name__}WithCtcLogits",
                                      [("ctc_logits", Optional[torch.FloatTensor], None)], bases=(output_type,))


def hybrid_loss(decoder_loss, logits, labels, weight: float, tokenizer):
    """(1 - weight) x the decoder's loss + weight x the CTC loss of `logits` (the encoder's frames through the CTC
    layer) against the labels' text tokens: every label that is not padding or a special token (the prompt, the end
    of text), the end of text as the blank."""
    import torch

    end = tokenizer.eos_token_id
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=labels.device)
    text = (labels >= 0) & ~torch.isin(labels, special)
    targets = labels[text]
    target_lengths = text.sum(-1)
    log_probs = torch.nn.functional.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    ctc = torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=end,
                                       reduction="mean", zero_infinity=True)
    return (1 - weight) * decoder_loss + weight * ctc
