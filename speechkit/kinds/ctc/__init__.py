"""The CTC head kind (wav2vec2-like encoders, w2v-BERT): transcripts become the ids of a character vocab built from
the training text (task.vocab, vocab.py) or of the pretrained checkpoint's own tokenizer (task.vocab.source=
pretrained, its head kept), the head emits a symbol (or the blank) per frame, and the frames decode greedily or with
an n-gram LM (task.decoder, lm.py). What ships: the family's CTC processor (tokenizer and feature extractor), and the
LM's decoder when there is one. Long recordings (CtcFrames): the windows' frames over their context dropped, the
middle parts joined and decoded once, with each word's frame offsets."""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

from speechkit.config import ConfigError, DecoderType, VocabSource
from speechkit.kinds.base import HeadKind, LongForm, pad_labels  # noqa: F401  (pad_labels: CTC's batch targets)
from speechkit.rundir import RunDir

log = logging.getLogger(__name__)


class Ctc(HeadKind):
    """The CTC head's side of speech recognition (speechkit/tasks/asr.py composes it)."""

    name = "ctc"
    card_kind = "A speech recognition (CTC)"

    def __init__(self, task):
        super().__init__(task)
        self.vocab: dict = {}
        self.tokenizer = None  # task.vocab.source=pretrained: the checkpoint's own, kept
        self.lm = None  # a pyctcdecode decoder with the n-gram LM (task.decoder.type=kenlm, or shipped in a model dir)
        self.lm_order = None
        self.lm_text: List[str] = []
        self.logits: dict = {}  # the last evaluation's logits by row, when an LM decodes them (task.decoder.tune)

    # ------------------------------------------------------------------------------------------------- rules
    @classmethod
    def refusals(cls, get, family):
        weight = get("task.whisper_ctc_weight")
        if weight:
            yield "task.whisper_ctc_weight", weight, (f"0 for a {family.name} CTC model (an auxiliary CTC loss is "
                                                      "for a sequence-to-sequence model; a CTC model's loss is CTC "
                                                      "already)")
        if get("task.vocab.source") == VocabSource.pretrained.value:
            if not get("model.name_or_path"):
                yield "task.vocab.source", "pretrained", ("data for a model built from scratch (model.name_or_path is "
                                                          "null: there is no checkpoint's tokenizer to keep)")
            elif get("task.vocab.path"):
                yield "task.vocab.path", get("task.vocab.path"), ("null with task.vocab.source=pretrained (the "
                                                                  "checkpoint's own tokenizer is kept)")

    @property
    def pretrained_vocab(self) -> bool:
        return self.cfg.vocab.source == VocabSource.pretrained

    # ---------------------------------------------------------------------------- training: targets and model
    def fit(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The symbols: a character vocab built from the training text (or reused) and saved beside the run, or the
        pretrained checkpoint's own tokenizer (task.vocab.source=pretrained); training rows it cannot spell are
        dropped, evaluation rows kept (their unknown characters count as errors)."""
        from speechkit import data
        from speechkit.kinds.ctc import lm, vocab as vocabulary

        cfg = self.cfg.vocab
        if self.pretrained_vocab:
            self.tokenizer = self._checkpoint_tokenizer()
            self.vocab = self.tokenizer.get_vocab()
        else:
            self.vocab = vocabulary.make_vocab(cfg, data.texts(train_rows), data.texts(eval_rows))
        train_rows = vocabulary.drop_unspellable(train_rows, self.vocab, splits[0], report)
        vocabulary.warn_unspellable(data.texts(eval_rows), self.vocab, splits[1],
                                    self.tokenizer.unk_token if self.tokenizer is not None else cfg.unk_token)
        if is_main:
            vocabulary.write_vocab(self.vocab, RunDir(run_dir).vocab)
        if self.cfg.decoder.type == DecoderType.kenlm:
            self.lm_text = lm.lm_sentences(self.cfg.decoder, data.texts(train_rows), self.task.normalize)
        return train_rows, eval_rows

    def _checkpoint_tokenizer(self):
        """task.vocab.source=pretrained: the checkpoint's CTC tokenizer, which its head must fit (one output per
        symbol)."""
        from transformers import AutoTokenizer

        model_cfg = self.task.model_cfg
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision)
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.vocab.source=pretrained: {model_cfg.name_or_path} has no tokenizer to keep "
                              f"({str(err).splitlines()[0][:200]}); use task.vocab.source=data") from None
        head = getattr(self.task.model_config(model_cfg)[0], "vocab_size", None)
        if head is not None and tokenizer.vocab_size > head:
            raise ConfigError(f"task.vocab.source=pretrained: {model_cfg.name_or_path}'s tokenizer has "
                              f"{tokenizer.vocab_size} symbols, more than its head's {head} outputs; use "
                              "task.vocab.source=data")
        return tokenizer

    def describe(self) -> str:
        return f"{len(self.vocab)} symbols" + (" (the checkpoint's tokenizer)" if self.pretrained_vocab else "")

    def head_config(self) -> dict:
        common = {"ctc_loss_reduction": self.cfg.ctc_loss_reduction, "ctc_zero_infinity": self.cfg.ctc_zero_infinity}
        if self.pretrained_vocab:  # the checkpoint's head and its symbols, kept
            return common
        return {"vocab_size": len(self.vocab), "pad_token_id": self.vocab[self.cfg.vocab.pad_token], **common}

    def prepare(self, model, run_dir: str) -> None:
        """The tokenizer (of the run's vocab.json, or the checkpoint's), shipped with the feature extractor as the
        family's processor."""
        from speechkit.kinds.ctc import vocab as vocabulary

        tokenizer = self.tokenizer if self.pretrained_vocab else \
            vocabulary.make_tokenizer(RunDir(run_dir).vocab, self.cfg.vocab)
        self.processor = self.task.family.make_processor(tokenizer, self.task.feature_extractor)

    # ---------------------------------------------------------------------------------------- a saved model
    def restore(self, model, model_dir: str) -> None:
        from speechkit.kinds.ctc import lm

        self.processor = self.task.family.load_processor(model_dir)
        self.task.bind(model, self.processor.feature_extractor)
        self.vocab = self.processor.tokenizer.get_vocab()
        self.lm = lm.load(model_dir)
        if self.lm is not None:
            self.lm_order = lm.order_of(model_dir)

    def check_eval_rows(self, rows, split: str, report):
        from speechkit import data
        from speechkit.kinds.ctc import vocab as vocabulary

        vocabulary.warn_unspellable(data.texts(rows), self.vocab, split, self.processor.tokenizer.unk_token)
        return rows

    # ------------------------------------------------------------------------------------------ data and scoring
    def targets(self, rows) -> list:
        from speechkit import data

        tokenizer = self.processor.tokenizer
        return [tokenizer(t).input_ids for t in data.texts(rows)]

    def target_of(self, text: str) -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's character ids, or why it has none: as in fit, a transcript the vocab cannot
        spell is dropped, not taught as [UNK]."""
        from speechkit.kinds.ctc import vocab as vocabulary

        unknown = vocabulary.unknown_chars(text, self.vocab)
        if unknown:
            return None, "chars_outside_vocab", "".join(unknown)
        return self.processor.tokenizer(text).input_ids, "", ""

    def decode(self, model, loader, accelerator, keep_logits: bool = True):
        """({row: hypothesis}, {row: greedy text} or None, mean loss, predictions gathered): greedy CTC decoding
        (only argmax ids leave the device) or, with an n-gram LM decoder, beam search over the gathered logits,
        beside the greedy text of the same logits."""
        import torch

        from speechkit.kinds.ctc import lm
        from speechkit.tasks.scoring import gather_predictions

        tokenizer = self.processor.tokenizer
        blank = tokenizer.pad_token_id
        family, config = self.task.family, self.task.config

        def frames_of(batch, on):  # the frames each clip really has: its family's length arithmetic of its mask
            return family.output_lengths(config, batch["attention_mask"].sum(-1)).to(on)

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
        return dict(zip(rows, lm.decode(self.lm, utterances))), dict(zip(rows, greedy)), loss, gathered

    @property
    def decoder_label(self) -> Optional[str]:
        """How the summary names the decoder when it is not the plain one."""
        return f"{self.lm_order}-gram LM" if self.lm is not None else None

    # ------------------------------------------------------------------------------------------- the LM decoder
    def after_training(self, model, eval_set, accelerator, run_dir: str, result, batch_size: int):
        """task.decoder.type=kenlm: the n-gram LM built from the LM text, the shipped model's eval split decoded with
        it (alpha and beta tuned there with task.decoder.tune), the decoder shipped in model/; returns that
        evaluation."""
        from speechkit.data.samplers import eval_loader
        from speechkit.kinds.ctc import lm

        cfg = self.cfg.decoder
        if cfg.type == DecoderType.greedy:
            return result
        arpa = os.path.join(run_dir, f"lm-{cfg.order}gram.arpa")
        if accelerator.is_main_process:
            sizes = lm.write_arpa(self.lm_text, cfg.order, arpa, cfg.discount)
            log.info("Language model: %s, %s n-grams from %d sentences", arpa,
                     "/".join(str(sizes[n]) for n in sorted(sizes)), len(self.lm_text))
        accelerator.wait_for_everyone()
        labels = lm.alphabet(self.processor.tokenizer, model.config.vocab_size)
        self.lm = lm.build_decoder(labels, arpa, (w for t in self.lm_text for w in t.split()), cfg.alpha, cfg.beta)
        self.lm_order = cfg.order
        loader = accelerator.prepare(eval_loader(eval_set, self.task.collator(), batch_size))
        lm_result = self.task.evaluate(model, loader, eval_set, accelerator)
        if cfg.tune:  # on the logits already gathered: the model does not run again
            references = [p["reference"] for p in lm_result.predictions]
            utterances = [self.logits[r] for r in lm_result.rows]
            alpha, beta, wer = lm.tune(self.lm, utterances, references, cfg)
            log.info("task.decoder.tune: best alpha=%.3f beta=%.3f, WER %.4f (configured: %.4f)", alpha, beta, wer,
                     lm_result.metrics["eval_wer"])
            lm_result = self.task.rescored(lm_result, lm.decode(self.lm, utterances))
        if accelerator.is_main_process:
            lm.ship(self.lm, RunDir(run_dir).model)
        accelerator.wait_for_everyone()
        log.info("Final model with its LM: eval %s", lm_result.summary)
        return lm_result

    @property
    def decoder_name(self) -> str:
        if self.lm is None:
            return "greedy CTC (the most likely symbol per frame)"
        from speechkit.kinds.ctc import lm

        settings = lm.settings(self.lm)
        return (f"beam search with a {self.lm_order}-gram language model (alpha {settings['alpha']:g}, beta "
                f"{settings['beta']:g}); the greedy text of the same output is in predictions.csv")

    # -------------------------------------------------------------------------------------------- long form
    def long_form(self, runner) -> "CtcFrames":
        return CtcFrames(runner)


class CtcFrames(LongForm):
    """A CTC model's windows: each window's new part as frames (argmax ids, or the logits when an n-gram LM decodes
    them), joined into the recording's frames and decoded once, with the frame offset of every word."""

    def __init__(self, runner):
        super().__init__(runner)
        self.lm = runner.task.kind.lm  # the n-gram LM decoder shipped in model/, or None
        self.frame_s = runner.task.family.frame_hop(runner.task.config) / runner.rate
        self.decoder = "n-gram LM" if self.lm is not None else "greedy"

    def read(self, batch: List[tuple]) -> list:
        """Per window (new start, new end, window start, samples), its new part's frames: argmax ids, or the logits
        themselves when an LM decodes them (frames x symbols: 0.6 MB per 5 minutes of a 32-symbol model)."""
        import torch

        t = self.t
        features = t.task.inputs([w[3] for w in batch])
        inputs = {k: v.to(t.accelerator.device) for k, v in t.task.inputs.model_inputs(features).items()}
        with torch.no_grad(), t.accelerator.autocast():
            logits = t.model(**inputs).logits
            ids = (logits.float() if self.lm is not None else logits.argmax(dim=-1)).cpu().numpy()
        out = []
        for (start, end, left, samples), row in zip(batch, ids):
            first, last = round((start - left) / self.frame_s), round((end - left) / self.frame_s)
            # never past the window's own frames (a shorter last window's row is padded to the batch's longest)
            valid = t.task.family.output_frames(t.task.config, samples.size, t.rate)
            out.append(row[first:min(last, valid)])
        return out

    def join(self, parts: list, packed: Optional[list] = None) -> dict:
        """The recording's frames decoded once; or, for packed speech regions (`packed`: each part's window), each
        window decoded alone and its words' times mapped back to the recording."""
        import numpy as np

        if packed is not None:
            texts, words = [], []
            for frames, window in zip(parts, packed):
                region = self.join([frames])
                texts.append(region["text"])
                words += [{**w, "start": round(window.to_recording(w["start"]), 3),
                           "end": round(window.to_recording(w["end"], closing=True), 3)} for w in region["words"]]
            return {"text": " ".join(t for t in texts if t), "words": words}
        if self.lm is not None:  # beam search with the LM over the whole recording's frames
            text, _, offsets, *_ = self.lm.decode_beams(np.concatenate(parts))[0]
            spans = [(word, start, end) for word, (start, end) in offsets]
        else:
            decoded = self.t.task.processor.tokenizer.decode(np.concatenate(parts).tolist(), output_word_offsets=True)
            text, spans = decoded.text, [(w["word"], w["start_offset"], w["end_offset"]) for w in decoded.word_offsets]
        words = [{"word": word, "start": round(start * self.frame_s, 3), "end": round(end * self.frame_s, 3)}
                 for word, start, end in spans]
        return {"text": text, "words": words}
