"""Transcript normalization (conf/dataset `text:`): the same rules for training, evaluation and scoring."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from unidecode import unidecode

from speechkit.config import Digits, TextConfig

_DIGITS = re.compile(r"\d")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Normalized:
    text: str
    reason: Optional[str] = None  # why the example must be dropped, if it must


class TextNormalizer:
    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self._ignore = re.compile(cfg.chars_to_ignore) if cfg.chars_to_ignore else None

    def __call__(self, raw: Optional[str]) -> Normalized:
        text = raw or ""
        if self.cfg.unidecode:
            text = unidecode(text)
        if self.cfg.lowercase:
            text = text.lower()
        if self._ignore is not None:
            text = self._ignore.sub("", text)  # deleted, not spaced: as both recipes do
        if _DIGITS.search(text):
            if self.cfg.digits == Digits.drop_example:
                return Normalized(_SPACES.sub(" ", text).strip(), "digits_in_text")
            if self.cfg.digits == Digits.remove:
                text = _DIGITS.sub(" ", text)
        text = _SPACES.sub(" ", text).strip()
        if not text:
            return Normalized("", "empty_transcript")
        return Normalized(text)
