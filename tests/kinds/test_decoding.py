"""n-gram LM decoding: the ARPA writer against KenLM itself, and a trained model whose shipped LM the stock pipeline
loads and decodes with exactly as speechkit's own evaluation does."""

import csv
import json
import math

import pytest

from conftest import SMALL_DEMO, TINY, compose, run_cli
from speechkit.commands import train
from speechkit.kinds.ctc import lm as decoding

SENTENCES = ["the cat sees a dog", "the dog sees a cat", "a cat runs", "my dog runs here", "the old cat sleeps",
             "a dog sleeps here", "the cat sees my dog"]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_arpa_is_a_normalized_kneser_ney_model_kenlm_reads(tmp_path, order):
    """Every context's distribution over the vocabulary, </s> and <unk> sums to one as KenLM computes it from the
    file (so the backoff weights are right too), and a seen continuation beats an unseen one."""
    import kenlm

    path = tmp_path / f"{order}.arpa"
    sizes = decoding.write_arpa(SENTENCES, order, str(path))
    model = kenlm.Model(str(path))
    assert model.order == order and sizes[1] == len({w for s in SENTENCES for w in s.split()}) + 3  # <s> </s> <unk>
    words = sorted({w for s in SENTENCES for w in s.split()}) + ["</s>", "<unk>"]
    for context in ([], ["the"], ["the", "cat"], ["a", "dog"], ["dog", "the"], ["zebra"]):
        state, out = kenlm.State(), kenlm.State()
        model.BeginSentenceWrite(state)
        for w in context:
            model.BaseScore(state, w, out)
            state, out = out, kenlm.State()
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in words)
        assert total == pytest.approx(1.0, abs=1e-4), (context, total)
    if order >= 2:
        seen, unseen = model.score("the cat sees a dog", bos=True, eos=True), model.score("the cat dog a sees")
        assert seen > unseen


def test_alphabet_matches_the_model_outputs_not_the_tokenizer(tmp_path):
    """The tokenizer lists <s> and </s> on top of the CTC head's symbols: the decoder's labels stop at the head's
    size; blank is the empty label, the word delimiter a space."""
    from transformers import Wav2Vec2CTCTokenizer

    from speechkit.config import VocabConfig
    from speechkit.kinds.ctc.vocab import build_vocab, write_vocab

    vocab = build_vocab(SENTENCES, VocabConfig())
    write_vocab(vocab, str(tmp_path / "vocab.json"))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    assert len(tokenizer.get_vocab()) == len(vocab) + 2
    labels = decoding.alphabet(tokenizer, len(vocab))
    assert len(labels) == len(vocab) and labels[vocab["[PAD]"]] == "" and labels[vocab["|"]] == " "
    assert labels[vocab["c"]] == "c"


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm_run")
    cfg = compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, "trainer.max_steps=2", "trainer.progress_bar=false",
                            "task.decoder.type=kenlm", "task.decoder.tune=true", "task.decoder.tune_trials=3",
                            f"run_dir={run_dir}"])
    objective = train.run(cfg)
    return run_dir, objective


@pytest.mark.slow
def test_the_stock_pipeline_decodes_with_the_shipped_lm_as_speechkit_does(lm_run):
    run_dir, objective = lm_run
    model = run_dir / "model"
    assert (model / "alphabet.json").exists() and (model / "language_model" / "lm-3gram.arpa").exists()
    tuned = json.loads((model / "language_model" / "attrs.json").read_text())
    final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    assert "eval_wer_greedy" not in final  # training's own evaluations decode greedily; the LM comes after
    with open(run_dir / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert set(predictions[0]) == {"id", "reference", "hypothesis", "wer", "greedy"}
    import jiwer

    assert objective == pytest.approx(jiwer.wer([p["reference"] for p in predictions],
                                                [p["hypothesis"] for p in predictions]))

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(model))
    assert asr.type == "ctc_with_lm" and type(asr.decoder).__name__ == "BeamSearchDecoderCTC"
    lm = asr.decoder.model_container[asr.decoder._model_key]
    assert (lm.alpha, lm.beta) == pytest.approx((tuned["alpha"], tuned["beta"]))
    for p in predictions:
        assert asr(p["id"])["text"] == p["hypothesis"], p


@pytest.mark.slow
def test_evaluate_prints_lm_and_greedy_side_by_side(lm_run, tmp_path):
    run_dir, _ = lm_run
    done = run_cli("evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO,
                   f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("demo_en/test: WER"))
    assert "with the 3-gram LM (greedy: WER" in line
    ours = {p["id"]: p["hypothesis"] for p in csv.DictReader(open(run_dir / "predictions.csv"))}
    again = {p["id"]: p["hypothesis"] for p in csv.DictReader(open(tmp_path / "predictions.csv"))}
    assert again == ours
    assert "beam search with a 3-gram language model" in (tmp_path / "report.html").read_text()
    assert math.isfinite(float(line.split()[2]))


def test_lm_text_from_a_file_or_a_hub_text_data_set_is_normalized(tmp_path):
    from datasets import Dataset

    from speechkit.config import DecoderConfig, TextConfig
    from speechkit.data.text import TextNormalizer

    normalizer = TextNormalizer(TextConfig())
    normalize = lambda t: normalizer(t).text  # noqa: E731
    (tmp_path / "corpus.txt").write_text("The Cat, sees a dog!\n\nA DOG runs.\n")
    assert decoding.lm_sentences(DecoderConfig(text_file=str(tmp_path / "corpus.txt")), [], normalize) == [
        "the cat sees a dog", "a dog runs"]
    hub = tmp_path / "hub_text"
    (hub / "data").mkdir(parents=True)
    Dataset.from_dict({"sentence": ["My Dog sleeps.", "Here!"]}).to_parquet(str(hub / "data" / "train-0.parquet"))
    cfg = DecoderConfig(text_dataset=str(hub), text_column="sentence")
    assert decoding.lm_sentences(cfg, ["ignored"], normalize) == ["my dog sleeps", "here"]
    from speechkit.config import ConfigError

    with pytest.raises(ConfigError, match="task.decoder.text_column"):
        decoding.lm_sentences(DecoderConfig(text_dataset=str(hub)), [], normalize)
    assert decoding.lm_sentences(DecoderConfig(), ["a b", "", "c"], normalize) == ["a b", "c"]


@pytest.mark.slow
def test_transcribe_decodes_with_the_shipped_lm(lm_run, tmp_path):
    """transcribe.py on a model that ships an LM: beam search with it, the same text speechkit's evaluation gave for
    that clip, word timestamps from the decoder's frames."""
    run_dir, _ = lm_run
    prediction = next(csv.DictReader(open(run_dir / "predictions.csv")))
    done = run_cli("transcribe.py", f"model_dir={run_dir / 'model'}", f"audio={prediction['id']}",
                   f"output_dir={tmp_path}", "progress_bar=false", f"hydra.run.dir={tmp_path / 'h'}")
    assert done.returncode == 0, done.stderr[-3000:]
    stem = prediction["id"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["decoder"] == "n-gram LM" and result["text"] == prediction["hypothesis"]
    assert " ".join(w["word"] for w in result["words"]) == result["text"]
    assert all(0 <= w["start"] <= w["end"] <= result["duration_s"] + 0.05 for w in result["words"])
