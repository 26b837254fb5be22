"""Greedy CTC decoding and WER/CER (jiwer), shared by the trainer's evaluations and evaluate.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import jiwer
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import Wav2Vec2CTCTokenizer

from speechkit.batching import CTCCollator


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> Dict[str, float]:
    return {"wer": jiwer.wer(list(references), list(hypotheses)), "cer": jiwer.cer(list(references), list(hypotheses))}


@dataclass
class EvalResult:
    loss: float
    wer: float
    cer: float
    rows: List[int]  # dataset row of each prediction, in the order scored
    references: List[str]
    hypotheses: List[str]
    gathered: int = 0  # predictions received from all processes, before duplicates were dropped

    @property
    def metrics(self) -> Dict[str, float]:
        return {"eval_loss": self.loss, "eval_wer": self.wer, "eval_cer": self.cer,
                "eval_utterances": len(self.rows), "eval_gathered": self.gathered}


@torch.no_grad()
def run_eval(model, loader, collator: CTCCollator, tokenizer: Wav2Vec2CTCTokenizer, texts: Sequence[str],
             accelerator: Accelerator) -> EvalResult:
    """Score every utterance of `loader` once, across all processes; only argmax ids leave the device."""
    was_training = model.training
    model.eval()
    blank = tokenizer.pad_token_id
    unwrapped = accelerator.unwrap_model(model)
    ids: Dict[int, List[int]] = {}
    loss_sum, loss_count, gathered_count = 0.0, 0, 0
    for batch in tqdm(loader, desc="Evaluating", leave=False, dynamic_ncols=True,
                      disable=not accelerator.is_main_process):
        if batch is None:
            continue
        out = model(**collator.model_inputs(batch))
        pred = out.logits.argmax(dim=-1)
        # Frames that only cover padding are set to blank so they decode to nothing.
        frames = unwrapped._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        pred = pred.masked_fill(torch.arange(pred.shape[1], device=pred.device)[None, :] >= frames[:, None], blank)
        pred = accelerator.pad_across_processes(pred, dim=1, pad_index=blank)
        losses = out.loss.detach().float().reshape(1).repeat(len(pred)) if out.loss is not None else None
        gathered = accelerator.gather_for_metrics((pred, batch["index"]) + ((losses,) if losses is not None else ()))
        gathered_count += len(gathered[1])
        for row, p in zip(gathered[1].tolist(), gathered[0].cpu()):
            ids[row] = p.tolist()  # keyed by row: a row duplicated to even out processes counts once
        if losses is not None:
            loss_sum += float(gathered[2].sum())
            loss_count += len(gathered[2])
    rows = sorted(ids)
    hypotheses = tokenizer.batch_decode([ids[r] for r in rows])
    references = [texts[r] for r in rows]
    rates = error_rates(references, hypotheses)
    if was_training:
        model.train()
    return EvalResult(loss=loss_sum / max(loss_count, 1), wer=rates["wer"], cer=rates["cer"], rows=rows,
                      references=references, hypotheses=hypotheses, gathered=gathered_count)
