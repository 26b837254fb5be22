"""dataset.streaming=true: training from a stream (conf/dataset), for corpora larger than the disk or the RAM.

The training split is read as a `datasets.IterableDataset` (a Hub data set streamed, or a local folder's files read
one by one), each process its own share (`split_dataset_by_node`), its shards in a new order every epoch. Rows are
taken a window at a time (`dataset.shuffle_buffer` rows): each row is decoded and checked as the checking pass
checks it (RowCheck; the task's target too, e.g. a transcript the vocab cannot spell), the window's usable rows
are cut into batches by the training sampler (by duration or by count; shuffled with a generator of (seed, window,
epoch)) and yielded in that order. Memory holds one window of clips, never the corpus; nothing is cached.

Every batch carries the stream's position after it, (epoch, window, batches done in that window). Checkpoints keep
each process's position: a resumed run reads past the windows already done without decoding them, rebuilds the
current window (the same rows, so the same batches) and skips the batches already trained on; it goes on exactly as
an uninterrupted run. Rows dropped in the first epoch travel with the next batch to the trainer (its side of a
stream: speechkit/training/batches.py, StreamBatches), which keeps them in the checkpoint's data position and writes
them to the drop report (they are dropped again in later epochs, and not reported twice).

A stream has no length: training stops at trainer.max_steps (validation refuses a streamed run without it), and an
epoch ends when the stream runs out, after which it starts again.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from speechkit.config import ConfigError, DatasetConfig, RunError, first_line
from speechkit.data import columns
from speechkit.data.audio import AudioError, audio_ref, decode
from speechkit.data.checking import DropReport, RowCheck
from speechkit.data.dataset import random_crop
from speechkit.data.sources import load_source, split_of
from speechkit.data.text import TextNormalizer
from speechkit.data.samplers import batch_sampler

log = logging.getLogger(__name__)

LOCAL_SHARDS = 64  # a local folder's rows are cut into this many shards, whose order changes every epoch
Position = Tuple[int, int, int]  # (epoch, window, batches done in the window): where the next batch starts


def open_stream(cfg: DatasetConfig, target: str, split: str, seed: int, process_index: int = 0,
                num_processes: int = 1) -> IterableDataset:
    """The training split as a stream of encoded rows (`audio`, `target`): this process's share of it, the order of
    its shards drawn from (seed, epoch)."""
    rows = split_of(load_source(cfg, target), split, cfg)
    if not isinstance(rows, IterableDataset):  # a local folder: the metadata is read, the audio files stream
        rows = rows.to_iterable_dataset(num_shards=max(1, min(LOCAL_SHARDS, len(rows))))
    if num_processes > 1:
        rows = split_dataset_by_node(rows, rank=process_index, world_size=num_processes)
    return rows.shuffle(seed=seed, buffer_size=1)  # shards shuffled (set_epoch); rows keep their order in a shard


def target_rows(cfg: DatasetConfig, target: str, split: str) -> Dataset:
    """The training split's targets only (normalized transcripts, or labels), for the vocab or the label set: one
    pass over the split that decodes no audio. Rows whose text normalization drops them are left out here; the
    stream reports them when it reaches them."""
    rows = split_of(load_source(cfg, target), split, cfg)
    if isinstance(rows, IterableDataset):
        try:
            values = [r[target] for r in tqdm(rows.select_columns([target]), desc=f"Reading the {target}s ({split})",
                                              unit=" rows")]
        except Exception as err:  # a damaged shard, a remote read failing after datasets' retries
            raise RunError(f"dataset.path: the '{split}' split could not be read through ({type(err).__name__}: "
                           f"{first_line(err, 'no message')}); datasets' log above names the file; nothing was "
                           "trained yet") from err
        files = [""] * len(values)
    else:
        values = list(rows[target])
        files = [audio_ref(a) for a in rows.select_columns([columns.AUDIO])[columns.AUDIO]]
    if target == columns.TEXT:
        normalize = TextNormalizer(cfg.text)
        normalized = [normalize(v) for v in values]
        keep = [i for i, n in enumerate(normalized) if not n.reason]
        values = [normalized[i].text for i in keep]
        files = [files[i] for i in keep]
    return Dataset.from_dict({columns.AUDIO: files, target: values})


def training_batches(cfg: DatasetConfig, trainer_cfg, task, clip_samples: Tuple[int, Optional[int]],
                     accelerator: Accelerator, report: DropReport, report_path: str,
                     augment=None) -> "StreamedBatches":
    """The training split as streamed batches for `task`, as trainer_cfg batches (by duration or by count); their
    drops join `report`, written to `report_path`. `clip_samples`: the shortest and the longest clip the model
    takes (the checking pass's); `augment`: what changes each clip (speechkit/data/augment.py), or None."""
    rate = task.sampling_rate
    stream = open_stream(cfg, task.target, cfg.train_split, trainer_cfg.seed, accelerator.process_index,
                         accelerator.num_processes)
    check = RowCheck(cfg, rate, True, clip_samples[0], task.target, clip_samples[1])
    batches = StreamedBatches(stream, check, task.target_of, cfg.train_split, rate, cfg.shuffle_buffer,
                              trainer_cfg.batch_size, trainer_cfg.batch_duration_s, trainer_cfg.seed, task.crop,
                              trainer_cfg.group_by_length, task.padded_to)
    batches.report, batches.report_path = report, report_path
    batches.augment = augment if augment is not None and augment.active else None
    return batches


class StreamedBatches(torch.utils.data.IterableDataset):
    """Batches of checked clips from `stream`, endlessly, from `start` (a Position): dicts of `items` (the task's
    collator turns them into a batch), `dropped` (drop-report rows found since the last batch), `position` (where
    the next batch starts) and `end_of_epoch`. `target_of(value, audio) -> (target, reason, detail)`: the task's
    target for a checked row's normalized text, label or turns (`audio`: its file), or why it cannot have one."""

    def __init__(self, stream: IterableDataset, check: RowCheck, target_of: Callable, split: str,
                 sampling_rate: int, window: int, batch_size: int, batch_duration_s: Optional[float], seed: int = 0,
                 crop: Optional[int] = None, group_by_length: Optional[bool] = None, padded_to: Optional[int] = None):
        self.stream, self.check, self.target_of, self.split = stream, check, target_of, split
        self.sampling_rate, self.window = sampling_rate, window
        self.batch_size, self.batch_duration_s, self.group_by_length = batch_size, batch_duration_s, group_by_length
        self.seed, self.crop, self.padded_to = seed, crop, padded_to  # padded_to: what a clip costs in a batch
        self.start: Position = (0, 0, 0)
        self.report: Optional[DropReport] = None  # the checking pass's report, which the stream's drops join
        self.report_path: Optional[str] = None
        self.augment = None  # speechkit/data/augment.py: Augmenter; each clip changed before it is batched

    def __iter__(self):
        epoch, window, skip = self.start
        carried: List[dict] = []  # drops of windows that made no batch, sent with the next batch
        while True:
            first_window, made = window, False
            self.stream.set_epoch(epoch)
            rows = iter(self.stream)
            for _ in itertools.islice(rows, window * self.window):  # windows already trained on: read, not decoded
                pass
            ahead = next(rows, None)
            while ahead is not None:
                chunk = [ahead, *itertools.islice(rows, self.window - 1)]
                ahead = next(rows, None)
                items, dropped = self._checked(chunk, epoch, window)
                dropped = carried + dropped if not skip else []  # a resumed window's drops were received before
                batches = self._batches(items, epoch, window)
                for b, indices in enumerate(batches):
                    if b < skip:
                        continue
                    last = b == len(batches) - 1
                    end_of_epoch = last and ahead is None
                    position = (epoch + 1, 0, 0) if end_of_epoch else (epoch, window + 1, 0) if last \
                        else (epoch, window, b + 1)
                    yield {"items": [items[i] for i in indices], "dropped": dropped, "position": position,
                           "end_of_epoch": end_of_epoch}
                    dropped, made = [], True
                carried, skip, window = dropped, 0, window + 1
            if not made and first_window == 0:
                raise ConfigError(f"dataset.streaming: no usable row in a whole pass over split '{self.split}' "
                                  f"(dropped: {', '.join(sorted({d['reason'] for d in carried})) or 'none read'})")
            epoch, window = epoch + 1, 0

    def _checked(self, chunk: List[dict], epoch: int, window: int) -> Tuple[List[dict], List[dict]]:
        """The window's usable clips as the task's items, and drop-report rows for the others (first epoch only)."""
        items, dropped = [], []
        target = self.check.target
        heard: List[np.ndarray] = []  # the window's clips so far (the current one last): babble for the next ones

        def other(rng):
            return heard[int(rng.integers(len(heard) - 1))]

        for k, row in enumerate(chunk):
            index = window * self.window + k  # the row's place in this epoch's stream (of this process)
            audio, error = None, ("", "")
            try:
                audio = decode(row[columns.AUDIO], self.sampling_rate)
            except AudioError as err:
                error = (err.reason, err.detail)
            n = 0 if audio is None else int(audio.size)
            out = self.check(row[target], n, float(np.abs(audio).max()) if n else 0.0, *error)
            reason, detail = out["drop_reason"], out["drop_detail"]
            file = audio_ref(row[columns.AUDIO])
            if not reason:
                labels, reason, detail = self.target_of(out.get(columns.TEXT, row[target]), file)
            if reason:
                if epoch == 0:
                    dropped.append({"split": self.split, "row": index, "file": file,
                                    "reason": reason, "detail": detail})
                continue
            factor = 1.0
            if self.augment:
                heard.append(audio)
                audio, factor = self.augment(audio, self.seed, epoch, index, other if len(heard) > 1 else None)
            audio, begin = random_crop(audio, self.crop, self.seed, epoch, index)
            items.append({"input_values": audio, "index": index, "offset": begin, "speed": factor, "labels": labels,
                          "draw": (self.seed, epoch, index)})
        return items, dropped

    def _batches(self, items: List[dict], epoch: int, window: int) -> List[List[int]]:
        lengths = [len(x["input_values"]) for x in items]
        if not lengths:
            return []
        sampler = batch_sampler(lengths, self.batch_size, self.batch_duration_s, self.sampling_rate,
                                [self.seed, window], self.group_by_length, self.padded_to)
        sampler.set_epoch(epoch)
        return list(sampler)


class StreamCollator:
    """The task's collator over a streamed batch's items, the stream's bookkeeping passed along."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, streamed: dict) -> dict:
        batch = self.collate(streamed["items"])
        batch.update(dropped=streamed["dropped"], position=streamed["position"],
                     end_of_epoch=streamed["end_of_epoch"])
        return batch


def loader(batches: StreamedBatches, collate: Callable, loading: dict, seed: int) -> torch.utils.data.DataLoader:
    """The stream's loader, not prepared by accelerate (each process reads its own share already): one worker
    process at most, so the stream's order is one order (`loading`: hardware.loader_settings). Its own generator:
    starting it (as a resumed run does) must not draw from the global random stream dropout and masking use."""
    workers = min(1, loading.get("num_workers", 0))
    extra = {"prefetch_factor": loading.get("prefetch_factor", 2)} if workers else {}
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=StreamCollator(collate),
                                       num_workers=workers, pin_memory=loading.get("pin_memory", False),
                                       generator=torch.Generator().manual_seed(seed), **extra)
