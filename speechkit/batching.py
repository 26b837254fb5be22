"""Batches of similar duration, and the collator that pads them."""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor


class DurationBatchSampler(torch.utils.data.Sampler[List[int]]):
    """Batches of similar length so padding stays small, the order of batches shuffled every epoch.

    The order depends only on (seed, epoch), so a resumed run can replay an epoch and skip what it had seen.
    Shuffled indices are cut into mega-batches of 50 batches, each sorted by length and cut into batches; the
    full batches are then shuffled and a short remainder batch, if any, comes last.
    With shuffle=False (evaluation), batches simply follow the length order.
    """

    MEGA_BATCH = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 group_by_length: bool = True):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable") if self.group_by_length else np.arange(n)
            yield from (order[i:i + bs].tolist() for i in range(0, n, bs))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if self.group_by_length:
            mega = bs * self.MEGA_BATCH
            order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                    for chunk in (order[i:i + mega] for i in range(0, n, mega))])
        batches = [order[i:i + bs].tolist() for i in range(0, n, bs)]
        # The one short batch (if any) always comes last. Under several processes accelerate's BatchSamplerShard
        # deals batch i to process i % num_processes and pads only a short *last* batch; a short batch anywhere
        # else makes it silently drop that whole round of batches (one per process) from the epoch.
        full = n // bs
        for b in rng.permutation(full):
            yield batches[b]
        if full < len(batches):
            yield batches[-1]


class CTCCollator:
    """Pads audio (normalised per utterance, with its attention mask) and label ids (with -100, ignored by CTC)."""

    def __init__(self, feature_extractor: Wav2Vec2FeatureExtractor, pass_attention_mask: bool):
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
        batch = {"input_values": features["input_values"], "index": torch.tensor([x["index"] for x in items])}
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
