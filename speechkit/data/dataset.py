"""The torch-facing dataset of a checked split: each item its clip (from the decoded cache, or decoded on access),
its target and its row; training clips cut to a seeded random window where the task crops."""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from datasets import Dataset

from speechkit.data.audio import AudioError, decode
from speechkit.data.columns import AUDIO, PCM, PCM_SCALE

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
    (`labels`: what the task made of the row, e.g. character ids, a class id or a recording's turns), its row index
    and `offset`, the sample a random crop starts at (0 for a whole clip).

    With `crop`, a clip longer than that many samples is cut to a random window of it, drawn from (seed, epoch,
    row): a training loader asks for `(epoch, row)` (samplers.EpochTagged), so the draw is new every epoch and the
    same in every run and after a resume."""

    def __init__(self, ds: Dataset, sampling_rate: int, targets: Optional[Sequence] = None,
                 crop: Optional[int] = None, seed: int = 0):
        self.ds = ds
        self.sampling_rate = sampling_rate
        self.targets = targets
        self.crop, self.seed = crop, seed
        self.lengths = np.asarray(list(ds["num_samples"]), dtype=np.int64)
        if crop:  # batch by what the model will see
            self.lengths = np.minimum(self.lengths, crop)
        self.cached = PCM in ds.column_names
        # One column each: reading a whole row would turn its samples into a Python list.
        self._audio = ds.select_columns([AUDIO])
        if self.cached:  # as stored: datasets' numpy format would widen int16 to int64
            self._audio = ds.select_columns([PCM]).with_format("numpy", dtype=ds.features[PCM].feature.dtype)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key) -> Optional[dict]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        i = int(i)
        if self.cached:
            audio = self._audio[i][PCM]
            if audio.dtype == np.int16:
                audio = audio.astype(np.float32) / PCM_SCALE
        else:
            try:
                audio = decode(self._audio[i][AUDIO], self.sampling_rate)
            except AudioError as err:  # checked at start-up, so only if the file changed since: skip, don't crash
                log.warning("skipping row %d: %s", i, err)
                return None
        audio, start = random_crop(audio, self.crop, self.seed, epoch, i)
        item = {"input_values": audio, "index": i, "offset": start}  # offset: where a crop starts (samples)
        if self.targets is not None:
            item["labels"] = self.targets[i]
        return item
