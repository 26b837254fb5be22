"""Head kinds: the ways audio becomes text. Speech recognition (speechkit/tasks/asr.py) composes one, chosen by the
model's head; each kind is one package here and one line in KINDS, and owns, stated once:

- its rules (`refusals`): the settings it cannot take, one list that the early validation (speechkit/validation.py,
  before any import) and the build (`check_model`) both read;
- its targets: a character vocab or the checkpoint's own tokenizer (`fit`, `prepare`, `restore`), the labels of a
  row and of a batch, its loss hook (`forward`);
- its decoding for evaluation (`decode`), and its last step on the shipped model (`after_training`: CTC's n-gram LM);
- its long-form reading (`long_form`): how transcribe.py's windows go through the model and are joined.

- base.py        the contract every kind keeps (HeadKind), and what they share (padded labels)
- ctc/           a CTC head over characters: a symbol (or the blank) per frame; its vocab (vocab.py), its n-gram LM
                 decoding (lm.py)
- generation/    an encoder-decoder generating tokens after its family's prompt (Whisper, Moonshine)

A new kind (a transducer, a speech LLM) is one package here, its line in KINDS, the head in
speechkit/inference/heads.py's table if transformers names it otherwise, and its tests; a new family of an existing
kind touches nothing here. Nothing here imports torch, transformers or datasets at import time: validation reads a
kind's rules in a fraction of a second.
"""

from __future__ import annotations

import importlib

# the model's head -> the kind of speech recognition it does ("module:Class")
KINDS = {"ctc": "speechkit.kinds.ctc:Ctc",
         "seq2seq": "speechkit.kinds.generation:Generation"}


def kind_class(head: str):
    """The head kind of a model with `head` (a key of KINDS)."""
    module, cls = KINDS[head].split(":")
    return getattr(importlib.import_module(module), cls)
