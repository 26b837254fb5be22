"""task=asr: speech recognition. Transcripts become character ids (task.vocab, speechkit/tasks/asr/vocab.py), the
model gets a CTC head, predictions are decoded greedily or with an n-gram LM (task.decoder, decoding.py) and scored
by WER (lower is better; CER breaks ties)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import List, Optional, Tuple

import jiwer
import torch

from speechkit import data
from speechkit.config import DecoderType
from speechkit.data.text import TextNormalizer
from speechkit.rundir import RunDir
from speechkit.tasks.asr import decoding, vocab as vocabulary
from speechkit.tasks.base import Score, Task
from speechkit.tasks.scoring import EvalResult, gather_predictions
from speechkit.data.samplers import eval_loader

log = logging.getLogger(__name__)


def error_rates(references: List[str], hypotheses: List[str]) -> dict:
    return {"wer": jiwer.wer(list(references), list(hypotheses)), "cer": jiwer.cer(list(references), list(hypotheses))}


def pad_labels(items: List[dict], batch: dict) -> dict:
    """Label ids padded with -100, which CTC ignores."""
    longest = max(len(x["labels"]) for x in items)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)
    for row, x in enumerate(items):
        labels[row, : len(x["labels"])] = torch.tensor(x["labels"], dtype=torch.long)
    return {"labels": labels}


class SpeechRecognition(Task):
    name = "asr"
    target = data.TEXT  # the normalized transcript
    unit = "utterances"
    pipeline = "automatic-speech-recognition"
    card_kind = "A speech recognition (CTC)"
    card_usage = ('from transformers import pipeline\n'
                  'asr = pipeline("automatic-speech-recognition", model="<this folder or repo>")\n'
                  'print(asr("clip.wav")["text"])')
    inventory_kind = "characters"
    labels_to_model = True  # CTC computes its loss inside the model

    def __init__(self, cfg, dataset=None, model=None):
        super().__init__(cfg, dataset, model)
        normalizer = TextNormalizer(dataset.text) if dataset is not None else None
        self.normalize = (lambda t: normalizer(t).text) if normalizer else None  # the transcripts', for the LM's text
        self.processor = None  # the tokenizer and the feature extractor, as they ship
        self.vocab: dict = {}
        self.lm = None  # a pyctcdecode decoder with the n-gram LM (task.decoder.type=kenlm, or shipped in a model dir)
        self.lm_order = None
        self.lm_text: List[str] = []

    @classmethod
    def scores(cls, cfg) -> List[Score]:
        return [Score("eval_wer", "WER", "wer", lower_is_better=True),
                Score("eval_cer", "CER", "cer", lower_is_better=True)]

    @classmethod
    def extras(cls, cfg) -> List[str]:
        return ["lm"] if cfg.decoder.type == DecoderType.kenlm else []

    # ------------------------------------------------------------------------ training: targets and model
    def fit_targets(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The character vocab, built from the training text (or reused) and saved beside the run; training rows
        it cannot spell are dropped, evaluation rows kept (their unknown characters count as errors)."""
        cfg = self.cfg.vocab
        self.vocab = vocabulary.make_vocab(cfg, data.texts(train_rows), data.texts(eval_rows))
        train_rows = vocabulary.drop_unspellable(train_rows, self.vocab, splits[0], report)
        vocabulary.warn_unspellable(data.texts(eval_rows), self.vocab, splits[1], cfg.unk_token)
        if is_main:
            vocabulary.write_vocab(self.vocab, RunDir(run_dir).vocab)
        if self.cfg.decoder.type == DecoderType.kenlm:
            self.lm_text = decoding.lm_sentences(self.cfg.decoder, data.texts(train_rows), self.normalize)
        return train_rows, eval_rows

    def describe_targets(self) -> str:
        return f"{len(self.vocab)} symbols"

    def head_config(self) -> dict:
        return {"vocab_size": len(self.vocab), "pad_token_id": self.vocab[self.cfg.vocab.pad_token],
                "ctc_loss_reduction": self.cfg.ctc_loss_reduction, "ctc_zero_infinity": self.cfg.ctc_zero_infinity}

    def prepare(self, model, run_dir: str) -> None:
        """The tokenizer of the run's vocab.json, shipped with the feature extractor as the family's processor."""
        tokenizer = vocabulary.make_tokenizer(RunDir(run_dir).vocab, self.cfg.vocab)
        self.processor = self.family.ctc_processor(tokenizer, self.feature_extractor)

    # ---------------------------------------------------------------------------------- a saved model
    @classmethod
    def restore(cls, model, model_dir: str, options: dict) -> "SpeechRecognition":
        from speechkit.config import AsrConfig
        from speechkit.models import family_of

        task = cls(AsrConfig())
        task.processor = family_of(model.config.model_type).load_ctc_processor(model_dir)
        task.bind(model, task.processor.feature_extractor)
        task.vocab = task.processor.tokenizer.get_vocab()
        task.lm = decoding.load(model_dir)
        if task.lm is not None:
            task.lm_order = decoding.order_of(model_dir)
        return task

    def check_eval_rows(self, rows, split: str, report):
        vocabulary.warn_unspellable(data.texts(rows), self.vocab, split, self.processor.tokenizer.unk_token)
        return rows

    def save(self, path: str) -> None:
        self.processor.save_pretrained(path)

    # ----------------------------------------------------------------------------- data and scoring
    def targets(self, rows) -> list:
        tokenizer = self.processor.tokenizer
        return [tokenizer(t).input_ids for t in data.texts(rows)]

    def target_of(self, text: str, audio: str = "") -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's character ids, or why it has none (dataset.streaming): as in fit_targets, a
        transcript the vocab cannot spell is dropped, not taught as [UNK]."""
        unknown = vocabulary.unknown_chars(text, self.vocab)
        if unknown:
            return None, "chars_outside_vocab", "".join(unknown)
        return self.processor.tokenizer(text).input_ids, "", ""

    def batch_targets(self):
        return pad_labels

    def evaluate(self, model, loader, dataset, accelerator) -> EvalResult:
        """Greedy CTC decoding (only argmax ids leave the device) or, with an n-gram LM decoder, beam search over
        the gathered logits, scored beside the greedy text of the same logits."""
        tokenizer = self.processor.tokenizer
        blank = tokenizer.pad_token_id
        unwrapped = accelerator.unwrap_model(model)

        def frames_of(batch, on):  # the frames each clip really has: the model's own length arithmetic of its mask
            return unwrapped._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).to(on)

        def argmax(out, batch, _):
            pred = out.logits.argmax(dim=-1)
            # Frames that only cover padding are set to blank so they decode to nothing.
            frames = frames_of(batch, pred.device)
            return pred.masked_fill(torch.arange(pred.shape[1], device=pred.device)[None, :] >= frames[:, None], blank)

        def logits(out, batch, _):  # a first row holding the frame count: padding is cut on the host
            x = out.logits.float()
            counts = torch.zeros(x.shape[0], 1, x.shape[2], device=x.device)
            counts[:, 0, 0] = frames_of(batch, x.device).float()
            return torch.cat([counts, x], dim=1)

        by_row, loss, gathered = gather_predictions(model, loader, accelerator, self.forward,
                                                    logits if self.lm is not None else argmax, blank)
        rows = sorted(by_row)
        texts = data.texts(dataset.ds)
        references = [texts[r] for r in rows]
        if self.lm is None:
            hypotheses = tokenizer.batch_decode([by_row[r].tolist() for r in rows])
            return self._result(loss, gathered, rows, references, hypotheses)
        utterances = [by_row[r][1: 1 + int(by_row[r][0, 0])].numpy() for r in rows]
        self.logits = dict(zip(rows, utterances))  # kept for task.decoder.tune
        greedy = tokenizer.batch_decode([x.argmax(-1).tolist() for x in utterances])
        return self._result(loss, gathered, rows, references, decoding.decode(self.lm, utterances), greedy)

    def _result(self, loss, gathered, rows, references, hypotheses, greedy=None) -> EvalResult:
        rates = error_rates(references, hypotheses)
        metrics = {"eval_loss": loss, "eval_wer": rates["wer"], "eval_cer": rates["cer"]}
        summary = f"WER {rates['wer']:.4f}  CER {rates['cer']:.4f}"
        predictions = [{"reference": ref, "hypothesis": hyp, "wer": f"{jiwer.wer(ref, hyp):.4f}"}
                       for ref, hyp in zip(references, hypotheses)]
        if greedy is not None:
            plain = error_rates(references, greedy)
            metrics.update(eval_wer_greedy=plain["wer"], eval_cer_greedy=plain["cer"])
            summary += f" with the {self.lm_order}-gram LM (greedy: WER {plain['wer']:.4f}  CER {plain['cer']:.4f})"
            for p, g in zip(predictions, greedy):
                p["greedy"] = g
        metrics.update(eval_utterances=len(rows), eval_gathered=gathered)
        return EvalResult(metrics=metrics, rank=(rates["wer"], rates["cer"]), objective=rates["wer"],
                          summary=summary, rows=rows, predictions=predictions)

    # ------------------------------------------------------------------------------- the LM decoder
    def after_training(self, model, eval_set, accelerator, run_dir: str, result: EvalResult,
                       batch_size: int) -> EvalResult:
        """task.decoder.type=kenlm: the n-gram LM built from the LM text, the shipped model's eval split decoded with
        it (alpha and beta tuned there with task.decoder.tune), the decoder shipped in model/; returns that
        evaluation."""
        cfg = self.cfg.decoder
        if cfg.type == DecoderType.greedy:
            return result
        arpa = os.path.join(run_dir, f"lm-{cfg.order}gram.arpa")
        if accelerator.is_main_process:
            sizes = decoding.write_arpa(self.lm_text, cfg.order, arpa, cfg.discount)
            log.info("Language model: %s, %s n-grams from %d sentences", arpa,
                     "/".join(str(sizes[n]) for n in sorted(sizes)), len(self.lm_text))
        accelerator.wait_for_everyone()
        labels = decoding.alphabet(self.processor.tokenizer, model.config.vocab_size)
        self.lm = decoding.build_decoder(labels, arpa, (w for t in self.lm_text for w in t.split()), cfg.alpha,
                                         cfg.beta)
        self.lm_order = cfg.order
        loader = accelerator.prepare(eval_loader(eval_set, self.collator(), batch_size))
        lm_result = self.evaluate(model, loader, eval_set, accelerator)
        if cfg.tune:  # on the logits already gathered: the model does not run again
            references = [p["reference"] for p in lm_result.predictions]
            utterances = [self.logits[r] for r in lm_result.rows]
            alpha, beta, wer = decoding.tune(self.lm, utterances, references, cfg)
            log.info("task.decoder.tune: best alpha=%.3f beta=%.3f, WER %.4f (configured: %.4f)", alpha, beta, wer,
                     lm_result.metrics["eval_wer"])
            lm_result = self._result(lm_result.metrics["eval_loss"], lm_result.metrics["eval_gathered"],
                                     lm_result.rows, references, decoding.decode(self.lm, utterances),
                                     [p["greedy"] for p in lm_result.predictions])
        if accelerator.is_main_process:
            decoding.ship(self.lm, RunDir(run_dir).model)
        accelerator.wait_for_everyone()
        log.info("Final model with its LM: eval %s", lm_result.summary)
        return lm_result

    @property
    def decoder_name(self) -> str:
        if self.lm is None:
            return "greedy CTC (the most likely symbol per frame)"
        lm = decoding.settings(self.lm)
        return (f"beam search with a {self.lm_order}-gram language model (alpha {lm['alpha']:g}, beta "
                f"{lm['beta']:g}); the greedy text of the same output is in predictions.csv")

    def report_sections(self, result: EvalResult, ids: List[str], durations) -> list:
        """report.html: scores, WER by duration, frequent errors, every utterance aligned (speechkit/report.py)."""
        from speechkit.report import asr_sections

        return asr_sections([p["reference"] for p in result.predictions], [p["hypothesis"] for p in result.predictions],
                            durations, ids, self.decoder_name)

    def examples(self, result: EvalResult, n: int, width: int = 48) -> str:
        """A few references beside their hypotheses, for the console."""
        def cut(s: str) -> str:
            return s if len(s) <= width else s[: width - 1] + "…"

        lines = [f"{'reference':<{width}} | {'hypothesis':<{width}}", "-" * (2 * width + 3)]
        lines += [f"{cut(p['reference']):<{width}} | {cut(p['hypothesis']):<{width}}" for p in result.predictions[:n]]
        return "\n".join(lines)

    # --------------------------------------------------------------------------------------------- inspection
    def inventory(self, rows) -> Counter:
        """Every character of the normalized transcripts, counted."""
        return Counter("".join(data.texts(rows)))
