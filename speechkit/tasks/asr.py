"""task=asr: speech recognition. Transcripts become character ids (conf/vocab, speechkit/vocab.py), the model gets a
CTC head, predictions are decoded greedily and scored by WER (lower is better; CER breaks ties)."""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import jiwer
import torch
from datasets import Dataset
from transformers import AutoModelForCTC, PreTrainedModel, Wav2Vec2Processor

from speechkit import data, vocab as vocabulary
from speechkit.config import ModelConfig, VocabConfig
from speechkit.data import DropReport, SpeechDataset
from speechkit.model import build_model, feature_extractor_for, uses_attention_mask
from speechkit.rundir import RunDir
from speechkit.scoring import EvalResult, gather_predictions

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
    head = "ctc"  # the model head it needs (speechkit/model.py)
    target = data.TEXT  # the data column it learns from: the normalized transcript
    unit = "utterances"

    def __init__(self, vocab_cfg: Optional[VocabConfig] = None, processor: Optional[Wav2Vec2Processor] = None):
        self.vocab_cfg = vocab_cfg
        self.processor = processor
        self.vocab: dict = {}

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

    def collator(self, training: bool) -> CTCCollator:
        return self._collate

    def forward(self, model, batch: dict):
        """The model's output for a batch; CTC computes its loss inside the model."""
        return model(**self._collate.model_inputs(batch))

    def evaluate(self, model, loader, dataset: SpeechDataset, accelerator) -> EvalResult:
        """Greedy CTC decoding; only argmax ids leave the device."""
        tokenizer = self.processor.tokenizer
        blank = tokenizer.pad_token_id

        def predict(out, batch, unwrapped):
            pred = out.logits.argmax(dim=-1)
            # Frames that only cover padding are set to blank so they decode to nothing.
            frames = unwrapped._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
            return pred.masked_fill(torch.arange(pred.shape[1], device=pred.device)[None, :] >= frames[:, None], blank)

        by_row, loss, gathered = gather_predictions(model, loader, accelerator, self.forward, predict, blank)
        rows = sorted(by_row)
        hypotheses = tokenizer.batch_decode([by_row[r].tolist() for r in rows])
        texts = data.texts(dataset.ds)
        references = [texts[r] for r in rows]
        rates = error_rates(references, hypotheses)
        return EvalResult(
            metrics={"eval_loss": loss, "eval_wer": rates["wer"], "eval_cer": rates["cer"],
                     "eval_utterances": len(rows), "eval_gathered": gathered},
            rank=(rates["wer"], rates["cer"]), objective=rates["wer"],
            summary=f"WER {rates['wer']:.4f}  CER {rates['cer']:.4f}", rows=rows,
            predictions=[{"reference": ref, "hypothesis": hyp, "wer": f"{jiwer.wer(ref, hyp):.4f}"}
                         for ref, hyp in zip(references, hypotheses)])

    decoder = "greedy CTC (the most likely symbol per frame)"

    def report_sections(self, result: EvalResult, ids: List[str], durations) -> list:
        """report.html: scores, WER by duration, frequent errors, every utterance aligned (speechkit/report.py)."""
        from speechkit.report import asr_sections

        return asr_sections([p["reference"] for p in result.predictions], [p["hypothesis"] for p in result.predictions],
                            durations, ids, self.decoder)

    def examples(self, result: EvalResult, n: int, width: int = 48) -> str:
        """A few references beside their hypotheses, for the console."""
        def cut(s: str) -> str:
            return s if len(s) <= width else s[: width - 1] + "…"

        lines = [f"{'reference':<{width}} | {'hypothesis':<{width}}", "-" * (2 * width + 3)]
        lines += [f"{cut(p['reference']):<{width}} | {cut(p['hypothesis']):<{width}}" for p in result.predictions[:n]]
        return "\n".join(lines)
