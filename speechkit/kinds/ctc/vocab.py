"""The character vocab of speech recognition (task.vocab) and the CTC tokenizer built on it."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Iterable, List

from datasets import Dataset

from speechkit.config import ConfigError, VocabConfig
from speechkit.data.audio import audio_ref
from speechkit.data.checking import DropReport
from speechkit.data.columns import AUDIO, texts as data_texts

log = logging.getLogger(__name__)


def build_vocab(texts: Iterable[str], cfg: VocabConfig) -> Dict[str, int]:
    """Sorted characters (space written as the word delimiter), then [UNK] and [PAD]: same data, same ids."""
    chars = set()
    for t in texts:
        chars.update(t)
    chars.discard(" ")
    symbols = sorted(chars | {cfg.word_delimiter})
    for special in (cfg.unk_token, cfg.pad_token):
        if special in symbols:
            symbols.remove(special)
        symbols.append(special)
    return {s: i for i, s in enumerate(symbols)}


def load_vocab(path: str, cfg: VocabConfig) -> Dict[str, int]:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(f"task.vocab.path: {path} does not exist")
    with open(path) as f:
        vocab = json.load(f)
    absent = [t for t in (cfg.word_delimiter, cfg.unk_token, cfg.pad_token) if t not in vocab]
    if absent:
        raise ConfigError(f"task.vocab.path: {path} lacks the token(s) {absent} (set task.vocab.word_delimiter / "
                          "task.vocab.unk_token / task.vocab.pad_token to its own names)")
    return vocab


def make_vocab(cfg: VocabConfig, train_texts: List[str], eval_texts: List[str]) -> Dict[str, int]:
    if cfg.path:
        return load_vocab(cfg.path, cfg)
    return build_vocab(train_texts + (eval_texts if cfg.include_eval_text else []), cfg)


def unknown_chars(text: str, vocab: Dict[str, int]) -> List[str]:
    return sorted({c for c in text if c != " " and c not in vocab})


def warn_unspellable(texts: List[str], vocab: Dict[str, int], split: str, unk_token: str) -> None:
    """Eval text is scored as is: characters the model cannot spell are counted as errors, not hidden."""
    unknown = sorted({c for t in texts for c in unknown_chars(t, vocab)})
    if unknown:
        log.warning("split '%s' has characters outside the vocab %s: they become %s in the labels and count as "
                    "errors in WER/CER", split, unknown, unk_token)


def drop_unspellable(ds: Dataset, vocab: Dict[str, int], split: str, report: DropReport) -> Dataset:
    """Training rows the vocab cannot spell are dropped (and reported) rather than taught as [UNK]."""
    texts = data_texts(ds)
    keep: List[int] = []
    for i, t in enumerate(texts):
        unknown = unknown_chars(t, vocab)
        if unknown:
            report.add(split, i, audio_ref(ds[i][AUDIO]), "chars_outside_vocab", "".join(unknown))
        else:
            keep.append(i)
    return ds if len(keep) == len(texts) else ds.select(keep)


def write_vocab(vocab: Dict[str, int], path: str) -> None:
    with open(path, "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)


def make_tokenizer(vocab_path: str, cfg: VocabConfig):
    """The CTC tokenizer of a vocab.json; the model's family ships it with its feature extractor as one processor
    (speechkit/models/), so that `transformers.pipeline` loads the model folder."""
    from transformers import Wav2Vec2CTCTokenizer

    return Wav2Vec2CTCTokenizer(vocab_path, unk_token=cfg.unk_token, pad_token=cfg.pad_token,
                                word_delimiter_token=cfg.word_delimiter)
