"""`python evaluate.py`: score a trained model directory on one split of a dataset config."""

from __future__ import annotations

import csv
import logging
import os

import jiwer
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from speechkit import data
from speechkit.audio import audio_ref
from speechkit.batching import ClipCountBatchSampler, CTCCollator
from speechkit.config import EvaluateConfig, check_required
from speechkit.hardware import loader_settings, make_accelerator
from speechkit.model import uses_attention_mask
from speechkit.rundir import RunDir
from speechkit.scoring import EvalResult, run_eval
from speechkit.validation import saved_model_dir
from speechkit.vocab import warn_unspellable

log = logging.getLogger(__name__)


def run(raw_cfg: DictConfig) -> EvalResult:
    check_required(raw_cfg)
    cfg: EvaluateConfig = OmegaConf.to_object(raw_cfg)
    model_dir = saved_model_dir(cfg.model_dir)
    os.makedirs(cfg.run_dir, exist_ok=True)
    accelerator = make_accelerator(cfg.hw)

    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir)
    sampling_rate = processor.feature_extractor.sampling_rate

    report = data.DropReport()
    with accelerator.main_process_first():
        rows = data.load_splits(cfg.dataset, {cfg.split: False}, sampling_rate, report)[cfg.split]
    vocab = processor.tokenizer.get_vocab()
    warn_unspellable(data.texts(rows), vocab, cfg.split, processor.tokenizer.unk_token)
    dataset = data.SpeechDataset(rows, sampling_rate, lambda text: processor.tokenizer(text).input_ids)
    collator = CTCCollator(processor.feature_extractor, uses_attention_mask(model))
    sampler = ClipCountBatchSampler(dataset.lengths, cfg.batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=collator, batch_sampler=sampler,
                                         **loader_settings(accelerator))
    model, loader = accelerator.prepare(model, loader)
    result = run_eval(model, loader, collator, processor.tokenizer, dataset.texts, accelerator)

    if accelerator.is_main_process:
        files = rows.select_columns([data.AUDIO])
        path = RunDir(cfg.run_dir).predictions
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "reference", "hypothesis", "wer"])
            for r, ref, hyp in zip(result.rows, result.references, result.hypotheses):
                w.writerow([audio_ref(files[r][data.AUDIO]), ref, hyp, f"{jiwer.wer(ref, hyp):.4f}"])
        report.write(RunDir(cfg.run_dir).drop_report)
        print(_table(result, cfg.num_examples))
        dropped = report.counts()
        print(f"\n{cfg.dataset.name}/{cfg.split}: WER {result.wer:.4f}  CER {result.cer:.4f}  "
              f"scored {len(result.rows)} utterances, dropped {sum(dropped.values())}"
              + (f" ({', '.join(f'{k}={v}' for k, v in sorted(dropped.items()))})" if dropped else "")
              + f"\nPredictions: {path}", flush=True)
    return result


def _table(result: EvalResult, n: int, width: int = 48) -> str:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = [f"{'reference':<{width}} | {'hypothesis':<{width}}", "-" * (2 * width + 3)]
    lines += [f"{cut(r):<{width}} | {cut(h):<{width}}" for r, h in list(zip(result.references, result.hypotheses))[:n]]
    return "\n".join(lines)
