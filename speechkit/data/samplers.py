"""Batch samplers: clips of similar duration grouped into batches of a fixed number of clips, or of a budget of
seconds, for a split and for a stream's window alike. (The collator that pads them is the tasks' one,
speechkit/tasks/base.py; what the training loop iterates is speechkit/training/batches.py.)"""

from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch


class ClipCountBatchSampler(torch.utils.data.Sampler[List[int]]):
    """`batch_size` clips per batch, of similar length so padding stays small, the order of batches shuffled every
    epoch (what the Hugging Face Trainer's group_by_length does, and what the published recipes used).

    The order depends only on (seed, epoch) (`seed` may be several numbers: a stream's (seed, window)), so a resumed
    run can replay an epoch and skip what it had seen.
    Shuffled indices are cut into mega-batches of 50 batches, each sorted by length and cut into batches; the
    full batches are then shuffled and a short remainder batch, if any, comes last.
    With shuffle=False (evaluation), batches simply follow the length order. `lengths_at(epoch)`: the lengths an
    epoch's clips have where they change from epoch to epoch (speed perturbation), grouped by instead.
    """

    MEGA_BATCH = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 group_by_length: bool = True, lengths_at: Optional[Callable[[int], np.ndarray]] = None):
        self.lengths = np.asarray(lengths)
        self.lengths_at = lengths_at
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
        rng = np.random.default_rng([*np.atleast_1d(self.seed).tolist(), self.epoch])
        order = rng.permutation(n)
        if self.group_by_length:
            mega = bs * self.MEGA_BATCH
            lengths = self.lengths_at(self.epoch) if self.lengths_at else self.lengths
            order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
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


class DurationBatchSampler(torch.utils.data.Sampler[List[int]]):
    """Batches of at most `max_samples` samples each, padding counted (clips x longest clip): many short clips or a
    few long ones, so every batch fills the device alike and none runs out of memory.

    Clips are sorted by length and cut once into buckets of similar length (within BUCKET_WIDTH of the bucket's
    longest clip, and a whole number of batches each); every epoch shuffles the clips inside each bucket, cuts them
    into that bucket's batches and shuffles the order of all batches. The batches change from epoch to epoch but
    their number does not (the trainer counts steps before it starts; but see lengths_at below), the order depends
    only on (seed, epoch) so a resumed run replays an epoch and skips what it had seen, and padding stays within the
    bucket width. Batches vary in size, which `batch_size = None` tells accelerate: under several processes it deals
    them out round by round.

    With `lengths_at(epoch)` (speed perturbation: a clip's length changes from epoch to epoch), the buckets are cut
    anew every epoch from the lengths the clips have in it: the budget and the padding hold exactly, and the number
    of batches moves a little from epoch to epoch (the trainer counts epoch 0's).
    """

    BUCKET_WIDTH = 0.05  # clips of a bucket are at least 95 % as long as its longest: padding under 5 % per batch

    batch_size = None  # variable-size batches (accelerate's BatchSamplerShard reads this)
    drop_last = False

    def __init__(self, lengths: Sequence[int], max_samples: int, seed: int = 0,
                 lengths_at: Optional[Callable[[int], np.ndarray]] = None):
        self.lengths = np.asarray(lengths)
        self.max_samples = int(max_samples)
        self.lengths_at = lengths_at
        self.seed = seed
        self.epoch = 0
        self._cut = (None, self._buckets(self.lengths))  # (epoch it was cut for; None: every epoch), buckets

    def _buckets(self, lengths: np.ndarray) -> List[Tuple[np.ndarray, int]]:
        """(clip indices, clips per batch) of each bucket, longest clips first."""
        order = np.argsort(-lengths, kind="stable")
        buckets, start, n = [], 0, len(order)
        while start < n:
            longest = int(lengths[order[start]])
            per_batch = max(1, self.max_samples // max(longest, 1))
            end = start
            while end < n and lengths[order[end]] >= longest * (1 - self.BUCKET_WIDTH):
                end += 1
            # A whole number of batches; a bucket too small for one full batch borrows the next (shorter) clips.
            take = (end - start) // per_batch * per_batch or per_batch
            buckets.append((order[start:start + take], per_batch))
            start += take
        return buckets

    @property
    def buckets(self) -> List[Tuple[np.ndarray, int]]:
        if self.lengths_at is not None and self._cut[0] != self.epoch:
            self._cut = (self.epoch, self._buckets(np.asarray(self.lengths_at(self.epoch))))
        return self._cut[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(math.ceil(len(ix) / per) for ix, per in self.buckets)

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([*np.atleast_1d(self.seed).tolist(), self.epoch])
        batches = []
        for indices, per_batch in self.buckets:
            shuffled = rng.permutation(indices)
            batches += [shuffled[i:i + per_batch].tolist() for i in range(0, len(shuffled), per_batch)]
        for b in rng.permutation(len(batches)):
            yield batches[b]


def eval_loader(dataset, collate_fn, batch_size: int, seed: int = 0, **loading) -> torch.utils.data.DataLoader:
    """Every clip once, in batches of `batch_size` clips of similar length, longest first (evaluation); `loading`:
    hardware.loader_settings."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=ClipCountBatchSampler(dataset.lengths, batch_size,
                                                                                    shuffle=False),
                                       collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed), **loading)


def batch_sampler(lengths: Sequence[int], batch_size: int, batch_duration_s: Optional[float], sampling_rate: int,
                  seed, group_by_length: Optional[bool] = None, padded_to: Optional[int] = None,
                  lengths_at: Optional[Callable[[int], np.ndarray]] = None) -> torch.utils.data.Sampler:
    """trainer.batch_duration_s when set (seconds of audio per batch), else trainer.batch_size clips per batch: the
    training batches of a split (train_batch_sampler) and of a stream's window (speechkit/data/streaming.py) alike.
    `padded_to`: a model of a fixed input window (Whisper, AST) is fed every clip padded to that many samples, so a
    duration budget is a number of clips (the budget over the window). `group_by_length` (trainer.group_by_length):
    batches of clips of similar duration; None, the default: where clips are padded to the batch's longest, not to a
    fixed window. Whisper's encoder takes its whole window whatever the grouping, and grouped batches, which keep
    transcripts of similar length together, spare only the decoder some padding: on whisper_scratch they bought a
    few percent of throughput at most and trained worse in three of four side-by-side runs (docs/speed.md).
    `lengths_at`: a split's lengths by epoch where speed perturbation changes them."""
    if group_by_length is None:
        group_by_length = padded_to is None
    if batch_duration_s and padded_to:
        return ClipCountBatchSampler(lengths, clips_per_budget(batch_duration_s, sampling_rate, padded_to),
                                     seed=seed, group_by_length=group_by_length, lengths_at=lengths_at)
    if batch_duration_s:
        return DurationBatchSampler(lengths, int(batch_duration_s * sampling_rate), seed=seed, lengths_at=lengths_at)
    return ClipCountBatchSampler(lengths, batch_size, seed=seed, group_by_length=group_by_length,
                                 lengths_at=lengths_at)


def clips_per_budget(batch_duration_s: float, sampling_rate: int, padded_to: int) -> int:
    """Clips of a fixed `padded_to` samples in a budget of `batch_duration_s` seconds (at least one)."""
    return max(1, int(batch_duration_s * sampling_rate) // padded_to)


def train_batch_sampler(lengths: Sequence[int], batch_size: int, batch_duration_s: Optional[float],
                        sampling_rate: int, seed: int, group_by_length: Optional[bool] = None,
                        padded_to: Optional[int] = None,
                        lengths_at: Optional[Callable[[int], np.ndarray]] = None) -> torch.utils.data.Sampler:
    """batch_sampler's batches, each index tagged with its epoch (EpochTagged)."""
    return EpochTagged(batch_sampler(lengths, batch_size, batch_duration_s, sampling_rate, seed, group_by_length,
                                     padded_to, lengths_at))


class EpochTagged(torch.utils.data.Sampler[List[Tuple[int, int]]]):
    """The batches of a training batch sampler with each index paired with its epoch, `(epoch, index)`. A dataset
    that draws random numbers per clip (a random crop) seeds them from (seed, epoch, index): the same draws in every
    run, in every worker process and after a resume, whatever the loader had prefetched when a checkpoint was
    written (a draw from the global RNG in the collator would not be: accelerate's loader collates one batch ahead).
    Everything else (len, set_epoch, batch_size for accelerate) is the wrapped sampler's."""

    def __init__(self, batches: torch.utils.data.Sampler):
        self.batches = batches

    def __getattr__(self, name: str):
        return getattr(self.__dict__["batches"], name)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch = self.batches.epoch
        for batch in self.batches:
            yield [(epoch, int(i)) for i in batch]
