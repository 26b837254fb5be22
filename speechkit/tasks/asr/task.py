"""task=asr: speech recognition. Transcripts become character ids (conf/vocab, speechkit/tasks/asr/vocab.py), the model gets a
CTC head, predictions are decoded greedily and scored by WER (lower is better; CER breaks ties)."""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import jiwer
import torch
from datasets import Dataset
from transformers import AutoModelForCTC, PreTrainedModel, Wav2Vec2Processor

from speechkit import data
from speechkit.tasks.asr import decoding, vocab as vocabulary
from speechkit.training.batches import eval_loader
from speechkit.config import DecoderConfig, DecoderType, ModelConfig, VocabConfig
from speechkit.data import DropReport, SpeechDataset
from speechkit.models import build_model, feature_extractor_for, uses_attention_mask
from speechkit.rundir import RunDir
from speechkit.tasks.scoring import EvalResult, gather_predictions

log = logging.getLogger(__name__)


class CTCCollator:
    """Pads audio (normalised per utterance, with its attention mask) and label ids (with -100, ignored by CTC)."""

    def __init__(self, feature_extractor, pass_attention_mask: bool):
        self.feature_extractor = feature_extractor
        self.pass_attention_mask = pass_attention_mask

    def __call__(self, items: List[Optional[dict]]) -> Optional[dict]:
        items = [x for x in items if x is not None]  # rows whose audio vanished since start-up
        if not items:
            return None
        features = self.feature_extractor(
            [x["input_values"] for x in items],
            sampling_rate=self.feature_extractor.sampling_rate,
            padding=True,
            return_attention_mask=True,  # always: normalisation must ignore the padding
            return_tensors="pt",
        )
        batch = {"input_values": features["input_values"], "index": torch.tensor([x["index"] for x in items]),
                 # plain numbers, for the trainer's throughput figures: they stay on the host
                 "audio_samples": sum(len(x["input_values"]) for x in items),
                 "padded_samples": int(features["input_values"].numel())}
        # The mask is always kept for output lengths; the model only sees it if it was trained with one.
        batch["attention_mask"] = features["attention_mask"]
        if "labels" in items[0]:
            longest = max(len(x["labels"]) for x in items)
            labels = torch.full((len(items), longest), -100, dtype=torch.long)
            for row, x in enumerate(items):
                labels[row, : len(x["labels"])] = torch.tensor(x["labels"], dtype=torch.long)
            batch["labels"] = labels
        return batch

    def model_inputs(self, batch: dict) -> dict:
        """What goes into the model's forward: the batch without bookkeeping, mask only where it belongs."""
        inputs = {"input_values": batch["input_values"]}
        if self.pass_attention_mask:
            inputs["attention_mask"] = batch["attention_mask"]
        if "labels" in batch:
            inputs["labels"] = batch["labels"]
        return inputs


def error_rates(references: List[str], hypotheses: List[str]) -> dict:
    return {"wer": jiwer.wer(list(references), list(hypotheses)), "cer": jiwer.cer(list(references), list(hypotheses))}


class SpeechRecognition:
    name = "asr"
    head = "ctc"  # the model head it needs (speechkit/models/)
    target = data.TEXT  # the data column it learns from: the normalized transcript
    unit = "utterances"
    crop = None  # training clips are whole utterances

    def __init__(self, vocab_cfg: Optional[VocabConfig] = None, processor: Optional[Wav2Vec2Processor] = None,
                 decoder_cfg: Optional[DecoderConfig] = None, normalize=None):
        self.vocab_cfg = vocab_cfg
        self.normalize = normalize  # the transcripts' text normalization, for the LM's own text
        self.processor = processor
        self.decoder_cfg = decoder_cfg
        self.vocab: dict = {}
        self.lm = None  # a pyctcdecode decoder with the n-gram LM (decoder=kenlm, or shipped in a model dir)
        self.lm_order = None
        self.lm_text: List[str] = []

    # ------------------------------------------------------------------------ training: targets and model
    def fit_targets(self, train_rows: Dataset, eval_rows: Dataset, splits: Tuple[str, str], report: DropReport,
                    run_dir: str, is_main: bool) -> Tuple[Dataset, Dataset]:
        """The character vocab, built from the training text (or reused) and saved beside the run; training rows
        it cannot spell are dropped, evaluation rows kept (their unknown characters count as errors)."""
        cfg = self.vocab_cfg
        self.vocab = vocabulary.make_vocab(cfg, data.texts(train_rows), data.texts(eval_rows))
        train_rows = vocabulary.drop_unspellable(train_rows, self.vocab, splits[0], report)
        vocabulary.warn_unspellable(data.texts(eval_rows), self.vocab, splits[1], cfg.unk_token)
        if is_main:
            vocabulary.write_vocab(self.vocab, RunDir(run_dir).vocab)
        if self.decoder_cfg is not None and self.decoder_cfg.type == DecoderType.kenlm:
            self.lm_text = decoding.lm_sentences(self.decoder_cfg, data.texts(train_rows), self.normalize)
        return train_rows, eval_rows

    def describe_targets(self) -> str:
        return f"{len(self.vocab)} symbols"

    def build_model(self, cfg: ModelConfig, run_dir: str) -> PreTrainedModel:
        model = build_model(cfg, "ctc", vocab_size=len(self.vocab), pad_token_id=self.vocab[self.vocab_cfg.pad_token])
        self.processor = vocabulary.make_processor(RunDir(run_dir).vocab, self.vocab_cfg,
                                                   feature_extractor_for(model, cfg))
        self._collate = CTCCollator(self.processor.feature_extractor, uses_attention_mask(model))
        return model

    # ---------------------------------------------------------------------------------- a saved model
    @classmethod
    def from_model_dir(cls, model_dir: str) -> Tuple["SpeechRecognition", PreTrainedModel]:
        task = cls(processor=Wav2Vec2Processor.from_pretrained(model_dir))
        model = AutoModelForCTC.from_pretrained(model_dir)
        task.vocab = task.processor.tokenizer.get_vocab()
        task._collate = CTCCollator(task.processor.feature_extractor, uses_attention_mask(model))
        task.lm = decoding.load(model_dir)
        if task.lm is not None:
            task.lm_order = decoding.order_of(model_dir)
        return task, model

    def check_eval_rows(self, rows: Dataset, split: str, report: DropReport) -> Dataset:
        vocabulary.warn_unspellable(data.texts(rows), self.vocab, split, self.processor.tokenizer.unk_token)
        return rows

    def save(self, path: str) -> None:
        self.processor.save_pretrained(path)

    # ----------------------------------------------------------------------------- data and scoring
    @property
    def sampling_rate(self) -> int:
        return self.processor.feature_extractor.sampling_rate

    def dataset(self, rows: Dataset, training: bool) -> SpeechDataset:
        tokenizer = self.processor.tokenizer
        return SpeechDataset(rows, self.sampling_rate, [tokenizer(t).input_ids for t in data.texts(rows)])

    def target_of(self, text: str, audio: str = "") -> Tuple[Optional[List[int]], str, str]:
        """A streamed training row's character ids, or why it has none (dataset.streaming, speechkit/data/streaming.py):
        as in fit_targets, a transcript the vocab cannot spell is dropped, not taught as [UNK]."""
        unknown = vocabulary.unknown_chars(text, self.vocab)
        if unknown:
            return None, "chars_outside_vocab", "".join(unknown)
        return self.processor.tokenizer(text).input_ids, "", ""

    def collator(self, training: bool) -> CTCCollator:
        return self._collate

    def forward(self, model, batch: dict):
        """The model's output for a batch; CTC computes its loss inside the model."""
        return model(**self._collate.model_inputs(batch))

    def evaluate(self, model, loader, dataset: SpeechDataset, accelerator) -> EvalResult:
        """Greedy CTC decoding (only argmax ids leave the device) or, with an n-gram LM decoder, beam search over
        the gathered logits, scored beside the greedy text of the same logits."""
        tokenizer = self.processor.tokenizer
        blank = tokenizer.pad_token_id
        unwrapped = accelerator.unwrap_model(model)

        def frames_of(batch, on):
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
        self.logits = dict(zip(rows, utterances))  # kept for decoder.tune
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
    def after_training(self, model, eval_set: SpeechDataset, accelerator, run_dir: str, result: EvalResult,
                       batch_size: int) -> EvalResult:
        """decoder=kenlm: the n-gram LM built from the LM text, the shipped model's eval split decoded with it (alpha
        and beta tuned there with decoder.tune), the decoder shipped in model/; returns that evaluation."""
        cfg = self.decoder_cfg
        if cfg is None or cfg.type == DecoderType.greedy:
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
        loader = accelerator.prepare(eval_loader(eval_set, self._collate, batch_size))
        lm_result = self.evaluate(model, loader, eval_set, accelerator)
        if cfg.tune:  # on the logits already gathered: the model does not run again
            references = [p["reference"] for p in lm_result.predictions]
            utterances = [self.logits[r] for r in lm_result.rows]
            alpha, beta, wer = decoding.tune(self.lm, utterances, references, cfg)
            log.info("decoder.tune: best alpha=%.3f beta=%.3f, WER %.4f (configured: %.4f)", alpha, beta, wer,
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
