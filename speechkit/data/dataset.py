"""The torch-facing dataset of a checked split: each item its clip (from the decoded cache, or decoded on access),
its target and its row; training clips augmented (conf/augment) and cut to a seeded random window where the task
crops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
import torch
from datasets import Dataset

from speechkit.data.audio import AudioError, decode
from speechkit.data.columns import AUDIO, PCM, PCM_SCALE

if TYPE_CHECKING:
    from speechkit.data.augment import Augmenter

log = logging.getLogger(__name__)


def random_crop(audio: np.ndarray, crop: Optional[int], seed: int, epoch: int, row: int) -> Tuple[np.ndarray, int]:
    """A clip longer than `crop` samples cut to a window of it drawn from (seed, epoch, row), and where it starts:
    new every epoch, the same in every run, worker and resume (SpeechDataset and a stream alike)."""
    if not crop or audio.size <= crop:
        return audio, 0
    start = int(np.random.default_rng((seed, epoch, row)).integers(0, audio.size - crop + 1))
    return audio[start:start + crop], start


class SpeechDataset(torch.utils.data.Dataset):
    """Checked rows; each item is its clip (float32, read from the decoded cache or decoded on access), its target
    (`labels`: what the task made of the row, e.g. character ids, a class id or a recording's turns), its row index,
    `offset`, the sample a random crop starts at (0 for a whole clip), and `speed`, the speed perturbation it got
    (1.0: none; a timed target's times divide by it).

    With `crop`, a clip longer than that many samples is cut to a random window of it, drawn from (seed, epoch,
    row): a training loader asks for `(epoch, row)` (samplers.EpochTagged), so the draw is new every epoch and the
    same in every run and after a resume. With `augment` (a training split's), each clip is changed first, drawn
    from the same (seed, epoch, row); where speed perturbation changes the clips' lengths, `lengths_at(epoch)` says
    what they are in that epoch (the batch sampler counts them)."""

    def __init__(self, ds: Dataset, sampling_rate: int, targets: Optional[Sequence] = None,
                 crop: Optional[int] = None, seed: int = 0, augment: Optional["Augmenter"] = None):
        self.ds = ds
        self.sampling_rate = sampling_rate
        self.targets = targets
        self.crop, self.seed = crop, seed
        self.augment = augment if augment is not None and augment.active else None
        self.samples = np.asarray(list(ds["num_samples"]), dtype=np.int64)
        self.lengths = self._cropped(self.samples)
        self.cached = PCM in ds.column_names
        # One column each: reading a whole row would turn its samples into a Python list.
        self._audio = ds.select_columns([AUDIO])
        if self.cached:  # as stored: datasets' numpy format would widen int16 to int64
            self._audio = ds.select_columns([PCM]).with_format("numpy", dtype=ds.features[PCM].feature.dtype)

    def _cropped(self, lengths: np.ndarray) -> np.ndarray:
        return np.minimum(lengths, self.crop) if self.crop else lengths  # batch by what the model will see

    @property
    def lengths_at(self):
        """`epoch -> lengths` where speed perturbation changes them from epoch to epoch; else None."""
        if not (self.augment and self.augment.changes_length):
            return None
        return lambda epoch: self._cropped(self.augment.lengths(self.samples, self.seed, epoch))

    def __len__(self) -> int:
        return len(self.ds)

    def _clip(self, i: int) -> Optional[np.ndarray]:
        if self.cached:
            audio = self._audio[i][PCM]
            return audio.astype(np.float32) / PCM_SCALE if audio.dtype == np.int16 else audio
        try:
            return decode(self._audio[i][AUDIO], self.sampling_rate)
        except AudioError as err:  # checked at start-up, so only if the file changed since: skip, don't crash
            log.warning("skipping row %d: %s", i, err)
            return None

    def _other(self, i: int):
        """A random training clip other than row `i` (babble), drawn with the caller's generator."""
        n = len(self)
        return None if n < 2 else lambda rng: self._clip((i + 1 + int(rng.integers(n - 1))) % n)

    def __getitem__(self, key) -> Optional[dict]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        i = int(i)
        audio = self._clip(i)
        if audio is None:
            return None
        factor = 1.0
        if self.augment:
            audio, factor = self.augment(audio, self.seed, epoch, i, self._other(i))
        audio, start = random_crop(audio, self.crop, self.seed, epoch, i)
        # offset: where a crop starts (samples); speed: the clip's speed perturbation
        item = {"input_values": audio, "index": i, "offset": start, "speed": factor}
        if isinstance(key, tuple):  # a training clip: what its other random draws (SpecAugment) come from
            item["draw"] = (self.seed, epoch, i)
        if self.targets is not None:
            item["labels"] = self.targets[i]
        return item
