"""The training batches the loop is fed: one interface over a split (map-style, every clip once per epoch in the
batch sampler's order) and a stream (dataset.streaming), so the loop never asks which it has and a checkpoint holds
one data position.

    for batch in batches          the micro-batches, endlessly, from where the position stands, epoch after epoch
    batches.progress              epochs done (a split's fractional, a stream's whole)
    batches.step_done()           after each optimizer step, in every process: whether an epoch ended with it
    batches.position()            what a checkpoint saves (JSON); in every process at the same step
    batches.restore(position)     where a resumed run starts
    batches.steps_per_epoch       micro-batches per epoch (None: a stream has no length)

Both draw nothing from the global random stream (their loaders have their own generators), so starting or resuming
them leaves dropout and masking exactly as an uninterrupted run has them.
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device

from speechkit.config import ConfigError, RunError, first_line
from speechkit.data.checking import DropReport
from speechkit.data.streaming import StreamedBatches, loader as stream_loader

log = logging.getLogger(__name__)


class SplitBatches:
    """A split's batches (a loader prepared by accelerate over a training batch sampler), epoch after epoch. The
    position is (epoch, micro-batches done in it); a resumed epoch skips the batches already trained on."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler, accelerator: Accelerator):
        self.loader, self.sampler, self.accelerator = loader, sampler, accelerator
        self.epoch, self.done = 0, 0
        self.steps_per_epoch = len(loader)

    def __iter__(self) -> Iterator[Optional[dict]]:
        while True:
            # Both: accelerate's loader re-sets its sampler's epoch from its own counter when iterated.
            self.loader.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch)
            rest = self.accelerator.skip_first_batches(self.loader, self.done) if self.done else self.loader
            for batch in rest:
                self.done += 1
                yield batch
            if self.done >= len(self.loader):  # the epoch ended on batches that made no step
                self.epoch, self.done = self.epoch + 1, 0

    @property
    def progress(self) -> float:
        return self.epoch + self.done / len(self.loader)

    def step_done(self) -> bool:
        if self.done < len(self.loader):
            return False
        self.epoch, self.done = self.epoch + 1, 0
        return True

    def position(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.done}

    def restore(self, position: dict) -> None:
        self.epoch, self.done = position["epoch"], position["batches_done"]

    def describe(self) -> str:
        return f"epoch {self.epoch}, batch {self.done}"


class StreamBatches:
    """A stream's batches (speechkit/data/streaming.py), read in every process from its own share, endlessly. Each
    batch carries the stream's bookkeeping, taken off it here: the position after it (epoch, window, batch), whether
    it ended an epoch of this process's stream, and the rows dropped since the last batch. The position saved is
    every process's, and the drops of the first epoch (which are also written to drop_report.jsonl then)."""

    steps_per_epoch = None

    def __init__(self, stream: StreamedBatches, collate, loading: dict, seed: int, accelerator: Accelerator):
        self.stream, self.accelerator = stream, accelerator
        self.loader = stream_loader(stream, collate, loading, seed)
        self.non_blocking = loading.get("pin_memory", False)
        self.at = stream.start  # (epoch, window, batches done in the window)
        self.pending: List[dict] = []  # drops not yet gathered into a position
        self.drops: List[dict] = []  # every process's drops so far
        self.ended = False  # an epoch of this process's stream ended since the last step

    def __iter__(self) -> Iterator[dict]:
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (ConfigError, RunError):
                raise
            except Exception as err:  # the source itself failed (a shard gone, the network after datasets' retries)
                raise RunError(f"the training stream failed after {self.describe()} ({type(err).__name__}: "
                               f"{first_line(err, 'no message')}); the checkpoints are intact: continue with "
                               "trainer.resume=auto once the data can be read again (the stream goes on from the "
                               "checkpoint's position)") from err
            self.pending += batch.pop("dropped")
            self.at = tuple(batch.pop("position"))
            self.ended |= batch.pop("end_of_epoch")
            yield send_to_device(batch, self.accelerator.device, non_blocking=self.non_blocking)

    @property
    def progress(self) -> float:
        return self.at[0]  # a stream does not know its length: its epochs are counted whole

    def step_done(self) -> bool:
        """Every process evaluates together, whichever stream ran out."""
        ended = self.ended if self.accelerator.num_processes == 1 else \
            anywhere(torch.tensor(self.ended, device=self.accelerator.device), self.accelerator)
        self.ended = False
        return ended

    def position(self) -> dict:
        """Every process's position and the drops so far; the drop report rewritten with them."""
        positions = gather_object([list(self.at)])  # in one process: the list as given
        new = list(gather_object(self.pending))
        self.pending = []
        self.drops += new
        if self.accelerator.is_main_process and self.stream.report_path:
            DropReport(list(self.stream.report.rows) + self.drops).write(self.stream.report_path)
            if new:
                log.info("Stream: %d row(s) dropped so far (%s), listed in %s", len(self.drops),
                         DropReport(self.drops).summary(), self.stream.report_path)
        return {"positions": [list(p) for p in positions], "drops": self.drops}

    def restore(self, position: dict) -> None:
        positions = position["positions"]
        if len(positions) != self.accelerator.num_processes:
            raise ConfigError(f"trainer.resume: the checkpoint's stream was read by {len(positions)} process(es), "
                              f"this run has {self.accelerator.num_processes}; resume with as many")
        self.stream.start = self.at = tuple(positions[self.accelerator.process_index])
        self.drops = list(position["drops"])

    def describe(self) -> str:
        return "stream at epoch %d, window %d, batch %d" % tuple(self.at)


def anywhere(flag: torch.Tensor, accelerator: Accelerator) -> bool:
    """True when `flag` is set in any process: every process must take a branch together, or DDP waits forever."""
    flag = flag.reshape(1).float()
    if accelerator.num_processes > 1:
        flag = accelerator.gather(flag).max()
    return bool(flag.item())
