"""Character vocab: deterministic ids, special tokens, reuse of an existing vocab.json."""

import json
import random

import pytest
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from speechkit.config import ConfigError, VocabConfig
from speechkit.kinds.ctc.vocab import build_vocab, load_vocab, make_tokenizer, write_vocab

TEXTS = ["hello world", "the cat sat", "über café", "don't stop"]


def test_same_data_same_ids_in_any_order():
    a = build_vocab(TEXTS, VocabConfig())
    shuffled = TEXTS[:]
    random.Random(3).shuffle(shuffled)
    assert build_vocab(shuffled, VocabConfig()) == a
    assert build_vocab(TEXTS * 3, VocabConfig()) == a


def test_layout_sorted_chars_then_unk_then_pad():
    v = build_vocab(TEXTS, VocabConfig())
    symbols = sorted(v, key=v.get)
    assert " " not in v and "|" in v
    assert symbols[-2:] == ["[UNK]", "[PAD]"]
    assert symbols[:-2] == sorted(symbols[:-2])
    assert list(v.values()) == list(range(len(v)))
    assert set("helowrdtcasübfén'p") <= set(v)


def test_reuse_existing_vocab(tmp_path):
    path = tmp_path / "vocab.json"
    write_vocab(build_vocab(["abc"], VocabConfig()), str(path))
    assert load_vocab(str(path), VocabConfig()) == json.loads(path.read_text())


def test_reused_vocab_must_have_the_special_tokens(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ConfigError, match=r"\[UNK\]"):
        load_vocab(str(path), VocabConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        load_vocab(str(tmp_path / "nope.json"), VocabConfig())


def test_processor_round_trip(tmp_path):
    path = tmp_path / "vocab.json"
    vocab = build_vocab(TEXTS, VocabConfig())
    write_vocab(vocab, str(path))
    processor = Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(return_attention_mask=True),
                                  tokenizer=make_tokenizer(str(path), VocabConfig()))
    ids = processor.tokenizer("the cat").input_ids
    assert ids == [vocab[c] for c in "the|cat"]
    assert processor.tokenizer.pad_token_id == vocab["[PAD]"]
    assert processor.tokenizer.decode(ids) == "the cat"
    # CTC-style: repeats collapse, blanks vanish, a blank separates a real double letter
    blank = vocab["[PAD]"]
    assert processor.tokenizer.decode([vocab["s"], vocab["s"], blank, vocab["t"], vocab["o"], blank, vocab["o"],
                                       vocab["p"]]) == "stoop"
