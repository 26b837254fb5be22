"""Decoding a CTC model's output (task.decoder): greedy (the most likely symbol per frame) or beam search with a word
n-gram language model (task.decoder.type=kenlm).

- The LM is an ARPA file speechkit writes itself (`write_arpa`: interpolated Kneser-Ney, order `task.decoder.order`)
  from the training transcripts after text normalization, or from a text file or a Hub text data set.
- Beam search is pyctcdecode's, scoring words with KenLM (`ufal.kenlm` ships the `kenlm` module as wheels).
- `task.decoder.tune=true` searches the LM weight (alpha) and the word bonus (beta) on the evaluation split: a small
  seeded random search around the configured values, the best pair kept.
- The decoder ships inside model/ (`alphabet.json`, `language_model/` with the ARPA, its words and alpha/beta) and
  the feature extractor's config names `Wav2Vec2ProcessorWithLM`, which is what makes the stock
  `pipeline("automatic-speech-recognition", model=dir)` load it and decode with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from speechkit.config import ConfigError, DecoderConfig

log = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
PROCESSOR_WITH_LM = "Wav2Vec2ProcessorWithLM"


# ------------------------------------------------------------------------------------------ the n-gram LM
def write_arpa(sentences: Iterable[str], order: int, path: str, discount: float = 0.75) -> Dict[int, int]:
    """An interpolated Kneser-Ney word n-gram model of `sentences`, written in the ARPA format KenLM reads; returns
    the number of n-grams per order.

    Highest order: raw counts; lower orders: continuation counts (how many different words precede the n-gram),
    raw counts for n-grams that start a sentence. Every seen n-gram gets (count - D) / c(context) plus the context's
    backoff weight D * N1+(context) / c(context) times its lower-order probability, so each context's distribution
    sums to one and an unseen word backs off by exactly that weight. Unigrams are interpolated with a uniform
    distribution over the vocabulary and <unk>."""
    counts: List[Counter] = [Counter() for _ in range(order + 1)]
    for sentence in sentences:
        words = [BOS, *sentence.split(), EOS]
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                counts[n][tuple(words[i:i + n])] += 1
    if not counts[1]:
        raise ConfigError("task.decoder: no text to build the language model from")
    adjusted: List[Counter] = [Counter() for _ in range(order + 1)]
    adjusted[order] = counts[order]
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in counts[n + 1])
        adjusted[n] = Counter({g: c if g[0] == BOS else left[g] for g, c in counts[n].items()})

    prob: List[Dict[tuple, float]] = [dict() for _ in range(order + 1)]
    backoff: List[Dict[tuple, float]] = [dict() for _ in range(order + 1)]
    vocab = sorted(w for (w,) in adjusted[1] if w != BOS)
    total = sum(adjusted[1][(w,)] for w in vocab)
    uniform = discount * len(vocab) / total / (len(vocab) + 1)
    for w in vocab:
        prob[1][(w,)] = (adjusted[1][(w,)] - discount) / total + uniform
    prob[1][(UNK,)] = uniform
    for n in range(2, order + 1):
        context_total, context_types = Counter(), Counter()
        for g, c in adjusted[n].items():
            context_total[g[:-1]] += c
            context_types[g[:-1]] += 1
        for h, c in context_total.items():
            backoff[n - 1][h] = discount * context_types[h] / c
        for g, c in adjusted[n].items():
            h = g[:-1]
            prob[n][g] = (c - discount) / context_total[h] + backoff[n - 1][h] * prob[n - 1][g[1:]]

    sizes = {1: len(prob[1]) + 1, **{n: len(prob[n]) for n in range(2, order + 1)}}
    with open(path, "w", encoding="utf-8") as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={sizes[n]}\n" for n in range(1, order + 1)) + "\n")
        for n in range(1, order + 1):
            f.write(f"\\{n}-grams:\n")
            entries = [((BOS,), None)] if n == 1 else []
            entries += sorted(prob[n].items())
            for g, p in entries:
                logp = -99.0 if p is None else math.log10(p)
                bow = backoff[n].get(g)
                f.write(f"{logp:.6f}\t{' '.join(g)}" + (f"\t{math.log10(bow):.6f}" if bow else "") + "\n")
            f.write("\n")
        f.write("\\end\\\n")
    return sizes


def lm_sentences(cfg: DecoderConfig, train_texts: Sequence[str], normalize) -> List[str]:
    """The LM's text: task.decoder.text_file (one sentence per line), a Hub text data set, or the training transcripts;
    the first two normalized as the transcripts are (`normalize`)."""
    if cfg.text_file:
        path = os.path.expanduser(cfg.text_file)
        if not os.path.isfile(path):
            raise ConfigError(f"task.decoder.text_file: {path} does not exist")
        with open(path, encoding="utf-8") as f:
            return [t for t in (normalize(line) for line in f) if t]
    if cfg.text_dataset:
        from datasets import load_dataset

        rows = load_dataset(cfg.text_dataset, split=cfg.text_split)
        if cfg.text_column not in rows.column_names:
            raise ConfigError(f"task.decoder.text_column: {cfg.text_dataset} has no column '{cfg.text_column}' "
                              f"(columns: {rows.column_names})")
        return [t for t in (normalize(x) for x in rows[cfg.text_column]) if t]
    return [t for t in train_texts if t]


# ---------------------------------------------------------------------------------------- the beam search
def alphabet(tokenizer, size: int) -> List[str]:
    """The decoder's labels: the tokenizer's symbols in id order, cut to the model's `size` outputs (the
    tokenizer also lists <s> and </s>, which the CTC head has no output for); the word delimiter becomes a space
    and the padding token, CTC's blank, the empty label."""
    by_id = {i: s for s, i in tokenizer.get_vocab().items()}
    labels = [by_id[i] for i in range(size)]
    blank, space = tokenizer.pad_token_id, tokenizer.word_delimiter_token_id
    return ["" if i == blank else " " if i == space else s for i, s in enumerate(labels)]


def build_decoder(labels: List[str], arpa: str, words: Iterable[str], alpha: float, beta: float):
    from pyctcdecode import build_ctcdecoder

    return build_ctcdecoder(labels, kenlm_model_path=arpa, unigrams=sorted(set(words)), alpha=alpha, beta=beta)


def decode(decoder, logits: Sequence[np.ndarray]) -> List[str]:
    """Beam search over each utterance's logits (frames x symbols), with pyctcdecode's defaults: what the stock
    pipeline does with the shipped decoder."""
    return [decoder.decode_beams(x)[0][0] for x in logits]


def tune(decoder, logits: Sequence[np.ndarray], references: List[str],
         cfg: DecoderConfig) -> Tuple[float, float, float]:
    """(alpha, beta, WER): a seeded random search of task.decoder.tune_trials pairs around the configured ones (which
    are tried first), scored on the evaluation split; the decoder is left set to the best pair."""
    import jiwer

    rng = random.Random(cfg.tune_seed)
    pairs = [(cfg.alpha, cfg.beta)] + [(round(rng.uniform(0.0, 2.0), 3), round(rng.uniform(-1.0, 3.0), 3))
                                       for _ in range(cfg.tune_trials - 1)]
    best = None
    for alpha, beta in pairs:
        decoder.reset_params(alpha=alpha, beta=beta)
        wer = jiwer.wer(references, decode(decoder, logits))
        log.info("task.decoder.tune: alpha=%.3f beta=%.3f WER %.4f", alpha, beta, wer)
        if best is None or wer < best[2]:
            best = (alpha, beta, wer)
    decoder.reset_params(alpha=best[0], beta=best[1])
    return best


# ----------------------------------------------------------------------------------------- shipping, loading
def ship(decoder, model_dir: str) -> None:
    """The decoder into model/ (pyctcdecode's own layout: alphabet.json, language_model/), and the feature
    extractor's config naming the processor with an LM, so that the stock pipeline loads it."""
    decoder.save_to_dir(model_dir)
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            config = json.load(f)
        if name == "processor_config.json":  # transformers 5 nests the feature extractor's config here
            config.setdefault("feature_extractor", {})["processor_class"] = PROCESSOR_WITH_LM
        config["processor_class"] = PROCESSOR_WITH_LM
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def load(model_dir: str):
    """The decoder shipped in `model_dir`, or None (a greedy model)."""
    if not os.path.isdir(os.path.join(model_dir, "language_model")):
        return None
    try:
        from pyctcdecode import BeamSearchDecoderCTC
    except ImportError:
        raise ConfigError(f"model_dir: {model_dir} ships an n-gram language model; decoding with it needs "
                          "pip install 'speechkit[lm]'") from None
    return BeamSearchDecoderCTC.load_from_dir(model_dir)


def settings(decoder) -> Dict[str, float]:
    lm = decoder.model_container[decoder._model_key]
    return {"alpha": float(lm.alpha), "beta": float(lm.beta)}


def order_of(model_dir: str) -> Optional[int]:
    """The n-gram order of the ARPA shipped in model_dir/language_model/."""
    folder = os.path.join(model_dir, "language_model")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".arpa"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                orders = [int(line.split()[1].split("=")[0]) for line in f if line.startswith("ngram ")]
                return max(orders) if orders else None
    return None


