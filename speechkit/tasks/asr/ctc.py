"""Speech recognition with a CTC head (wav2vec2-like encoders, w2v-BERT): transcripts become character ids of a vocab
built from the training text (task.vocab, vocab.py), the head emits a symbol (or the blank) per frame, and the frames
decode greedily or with an n-gram LM (task.decoder, decoding.py). What ships: the family's CTC processor (tokenizer
and feature extractor), and the LM's decoder when there is one."""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import torch

from speechkit import data
from speechkit.config import ConfigError, DecoderType
from speechkit.data.samplers import eval_loader
from speechkit.rundir import RunDir
from speechkit.tasks.asr import decoding, vocab as vocabulary
from speechkit.tasks.scoring import gather_predictions

log = logging.getLogger(__name__)


def pad_labels(items: List[dict], batch: dict) -> dict:
    """Label ids padded with -100, which the CTC loss ignores (and so does a decoder's cross-entropy)."""
    longest = max(len(x["labels"]) for x in items)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)
    for row, x in enumerate(items):
        labels[row, : len(x["labels"])] = torch.tensor(x["labels"], dtype=torch.long)
    return {"labels": labels}


class Ctc:
    """The CTC head's side of speech recognition (speechkit/tasks/asr/task.py delegates to it)."""

    name = "ctc"
    card_kind = "A speech recognition (CTC)"

    def __init__(self, task):
        self.task, self.cfg = task, task.cfg
        self.processor = None  # the tokenizer and the feature extractor, as they ship
        self.vocab: dict = {}
        self.lm = None  # a pyctcdecode decoder with the n-gram LM (task.decoder.type=kenlm, or shipped in a model dir)
        self.lm_order = None
        self.lm_text: List[str] = []
        self.logits: dict = {}  # the last evaluation's logits by row, when an LM decodes them (task.decoder.tune)

    # ---------------------------------------------------------------------------- training: targets and model
    def check_model(self, config) -> None:
        """Before any data: nothing a CTC head needs beyond having one; a sequence-to-sequence knob is refused."""
        if self.cfg.whisper_ctc_weight:
            raise ConfigError(f"task.whisper_ctc_weight={self.cfg.whisper_ctc_weight}: an auxiliary CTC loss is for a "
                              "sequence-to-sequence (Whisper) model; a CTC model's loss is CTC already: leave it 0")

    def forward(self, model, batch: dict, out):
        """The model's output as it is: a CTC model computes its loss from the labels."""
        return out

    def fit(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The character vocab, built from the training text (or reused) and saved beside the run; training rows
        it cannot spell are dropped, evaluation rows kept (their unknown characters count as errors)."""
        cfg = self.cfg.vocab
        self.vocab = vocabulary.make_vocab(cfg, data.texts(train_rows), data.texts(eval_rows))
        train_rows = vocabulary.drop_unspellable(train_rows, self.vocab, splits[0], report)
        vocabulary.warn_unspellable(data.texts(eval_rows), self.vocab, splits[1], cfg.unk_token)
        if is_main:
            vocabulary.write_vocab(self.vocab, RunDir(run_dir).vocab)
        if self.cfg.decoder.type == DecoderType.kenlm:
            self.lm_text = decoding.lm_sentences(self.cfg.decoder, data.texts(train_rows), self.task.normalize)
        return train_rows, eval_rows

    def describe(self) -> str:
        return f"{len(self.vocab)} symbols"

    def head_config(self) -> dict:
        return {"vocab_size": len(self.vocab), "pad_token_id": self.vocab[self.cfg.vocab.pad_token],
                "ctc_loss_reduction": self.cfg.ctc_loss_reduction, "ctc_zero_infinity": self.cfg.ctc_zero_infinity}

    def prepare(self, model, run_dir: str) -> None:
        """The tokenizer of the run's vocab.json, shipped with the feature extractor as the family's processor."""
        tokenizer = vocabulary.make_tokenizer(RunDir(run_dir).vocab, self.cfg.vocab)
        self.processor = self.task.family.ctc_processor(tokenizer, self.task.feature_extractor)

    # ---------------------------------------------------------------------------------------- a saved model
    def restore(self, model, model_dir: str) -> None:
        from speechkit.models import family_of

        self.processor = family_of(model.config.model_type).load_ctc_processor(model_dir)
        self.task.bind(model, self.processor.feature_extractor)
        self.vocab = self.processor.tokenizer.get_vocab()
        self.lm = decoding.load(model_dir)
        if self.lm is not None:
            self.lm_order = decoding.order_of(model_dir)

    def check_eval_rows(self, rows, split: str, report):
        vocabulary.warn_unspellable(data.texts(rows), self.vocab, split, self.processor.tokenizer.unk_token)
        return rows

    # ------------------------------------------------------------------------------------------ data and scoring
    def targets(self, rows) -> list:
        tokenizer = self.processor.tokenizer
        return [tokenizer(t).input_ids for t in data.texts(rows)]

    def target_of(self, text: str) -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's character ids, or why it has none: as in fit, a transcript the vocab cannot
        spell is dropped, not taught as [UNK]."""
        unknown = vocabulary.unknown_chars(text, self.vocab)
        if unknown:
            return None, "chars_outside_vocab", "".join(unknown)
        return self.processor.tokenizer(text).input_ids, "", ""

    def batch_targets(self):
        return pad_labels

    def decode(self, model, loader, accelerator, keep_logits: bool = True):
        """({row: hypothesis}, {row: greedy text} or None, mean loss, predictions gathered): greedy CTC decoding
        (only argmax ids leave the device) or, with an n-gram LM decoder, beam search over the gathered logits,
        beside the greedy text of the same logits."""
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

        by_row, loss, gathered = gather_predictions(model, loader, accelerator, self.task.forward,
                                                    logits if self.lm is not None else argmax, blank)
        rows = sorted(by_row)
        if self.lm is None:
            return dict(zip(rows, tokenizer.batch_decode([by_row[r].tolist() for r in rows]))), None, loss, gathered
        utterances = [by_row[r][1: 1 + int(by_row[r][0, 0])].numpy() for r in rows]
        if keep_logits:
            self.logits = dict(zip(rows, utterances))  # kept for task.decoder.tune
        greedy = tokenizer.batch_decode([x.argmax(-1).tolist() for x in utterances])
        return dict(zip(rows, decoding.decode(self.lm, utterances))), dict(zip(rows, greedy)), loss, gathered

    @property
    def decoder_label(self) -> Optional[str]:
        """How the summary names the decoder when it is not the plain one."""
        return f"{self.lm_order}-gram LM" if self.lm is not None else None

    # ------------------------------------------------------------------------------------------- the LM decoder
    def after_training(self, model, eval_set, accelerator, run_dir: str, result, batch_size: int):
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
        loader = accelerator.prepare(eval_loader(eval_set, self.task.collator(), batch_size))
        lm_result = self.task.evaluate(model, loader, eval_set, accelerator)
        if cfg.tune:  # on the logits already gathered: the model does not run again
            references = [p["reference"] for p in lm_result.predictions]
            utterances = [self.logits[r] for r in lm_result.rows]
            alpha, beta, wer = decoding.tune(self.lm, utterances, references, cfg)
            log.info("task.decoder.tune: best alpha=%.3f beta=%.3f, WER %.4f (configured: %.4f)", alpha, beta, wer,
                     lm_result.metrics["eval_wer"])
            lm_result = self.task.rescored(lm_result, decoding.decode(self.lm, utterances))
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
