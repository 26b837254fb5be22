"""The checking pass: every clip of a split decoded once and checked (readable, not silent, long enough, its target
usable); what is dropped, and why, goes to the drop report.

With `dataset.cache_audio` (the default) the decoded samples are kept (mono, at the model's rate; int16 for training
splits, half the disk; float32 for evaluation splits, so scores equal those of the stock pipeline reading the file)
in the datasets cache: an Arrow file that is memory-mapped, not loaded, keyed by the source's fingerprint, each audio
file's size and modification time and the sampling rate. Later epochs and later runs read samples from it and never
decode again; nothing large is held in RAM. With `cache_audio=false` only a few numbers per row are kept and the
loader decodes each clip again when it is batched.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
from datasets import Dataset, Features, List as ListOf, Value, concatenate_datasets
from datasets.fingerprint import Hasher

from speechkit.config import ConfigError, DatasetConfig
from speechkit.data.audio import AudioError, audio_ref, decode
from speechkit.data.columns import AUDIO, LABEL, PCM, PCM_SCALE, SEGMENTS, TEXT
from speechkit.data.sources import load_source, split_of, whole
from speechkit.data.text import TextNormalizer

AUDIO_CACHE_VERSION = 1  # bump when decoding changes, to invalidate cached audio


@dataclass
class DropReport:
    """Every example left out, with its file and the reason; written to the run dir."""

    rows: List[dict] = field(default_factory=list)

    def add(self, split: str, row: int, file: str, reason: str, detail: str = "") -> None:
        self.rows.append({"split": split, "row": row, "file": file, "reason": reason, "detail": detail})

    def counts(self, split: Optional[str] = None) -> Counter:
        return Counter(r["reason"] for r in self.rows if split is None or r["split"] == split)

    def summary(self) -> str:
        if not self.rows:
            return "no examples dropped"
        splits = sorted({r["split"] for r in self.rows})
        return "; ".join(f"{s}: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts(s).items())) for s in splits)

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            for r in self.rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _audio_cache_key(ds: Dataset, sampling_rate: int, keep: Optional[str]) -> str:
    """What the decoded audio depends on: the source's rows (datasets' fingerprint), the bytes of every file a row
    points to (size and modification time: the fingerprint of a metadata.csv does not change when a WAV beside it is
    rewritten), the sampling rate and the way speechkit decodes."""
    files = Hasher()
    for batch in ds.select_columns([AUDIO]).with_format("arrow").iter(batch_size=4096):
        cells = batch.column(AUDIO).combine_chunks()
        paths, has_bytes = cells.field("path").to_pylist(), cells.field("bytes").is_valid().to_pylist()
        for path, inline in zip(paths, has_bytes):
            if not inline and path:
                try:
                    st = os.stat(path)
                    files.update((path, st.st_size, st.st_mtime_ns))
                except OSError:
                    files.update((path, None))
    return Hasher.hash([ds._fingerprint, files.hexdigest(), sampling_rate, keep, AUDIO_CACHE_VERSION])


def decode_split(ds: Dataset, split: str, sampling_rate: int, keep: Optional[str] = None,
                 num_proc: Optional[int] = None) -> Dataset:
    """Decode every clip once: adds `num_samples`, `peak`, `audio_error`/`audio_detail` (why a clip is unusable) and,
    with `keep` ("int16" or "float32"), the clip itself (`pcm`). The result is cached by the datasets library under a
    key of everything it depends on (_audio_cache_key), so a second run with the same audio reads it back at once."""

    def one(audio):
        out = {"num_samples": 0, "peak": 0.0, "audio_error": "", "audio_detail": ""}
        samples = np.zeros(0, np.float32)
        try:
            array = decode(audio, sampling_rate)
        except AudioError as err:
            out.update(audio_error=err.reason, audio_detail=err.detail)
        else:
            out.update(num_samples=int(array.size), peak=float(np.abs(array).max()))
            samples = np.clip(np.rint(array * PCM_SCALE), -32768, 32767) if keep == "int16" else array
        return {**out, PCM: samples} if keep else out

    features = Features({**ds.features, "num_samples": Value("int64"), "peak": Value("float32"),
                         "audio_error": Value("string"), "audio_detail": Value("string")})
    if keep:
        features[PCM] = ListOf(Value(keep))
    return ds.map(one, input_columns=[AUDIO], features=features, num_proc=num_proc,
                  writer_batch_size=64 if keep else 1000,  # rows of samples: keep write buffers small
                  new_fingerprint=_audio_cache_key(ds, sampling_rate, keep),
                  desc=f"Decoding audio ({split})")


class RowCheck:
    """Whether one decoded row is usable, and why not: its text normalized (or its label present), its audio readable,
    not silent, long enough for the model (`min_samples`, its receptive field) and no longer than it takes whole
    (`max_samples`, a fixed input window such as Whisper's; None: any length), and, for training, within the duration
    filters. Called with (target value, samples, peak, audio error, its detail); returns the row's new columns (`text`
    normalized, `drop_reason`, `drop_detail`). The checking pass and a stream (speechkit/data/streaming.py) share it."""

    def __init__(self, cfg: DatasetConfig, sampling_rate: int, training: bool, min_samples: int = 0,
                 target: str = TEXT, max_samples: Optional[int] = None):
        self.target, self.min_samples, self.sampling_rate = target, min_samples, sampling_rate
        self.max_samples = max_samples
        self.normalize = TextNormalizer(cfg.text)
        self.filters = f = cfg.filters
        self.min_len = int(f.min_duration_s * sampling_rate) if training else 0
        self.max_len = int(f.max_duration_s * sampling_rate) if training and f.max_duration_s else None

    def __call__(self, raw, n, peak, audio_error, audio_detail) -> dict:
        f, rate = self.filters, self.sampling_rate
        if self.target == TEXT:
            norm = self.normalize(raw)
            out = {TEXT: norm.text, "drop_reason": norm.reason or "", "drop_detail": repr(raw) if norm.reason else ""}
        else:
            empty = raw is None or (raw.strip() == "" if isinstance(raw, str) else len(raw) == 0)
            missing = "no_reference" if self.target == SEGMENTS else "no_label"
            out = {"drop_reason": missing if empty else "", "drop_detail": repr(raw) if empty else ""}
        if out["drop_reason"]:
            pass
        elif audio_error:
            out.update(drop_reason=audio_error, drop_detail=audio_detail)
        elif peak <= f.silence_peak:
            out.update(drop_reason="silent", drop_detail=f"peak {peak:.2e} <= {f.silence_peak:g}")
        elif n < self.min_samples:
            out.update(drop_reason="too_short", drop_detail=f"{n} samples: shorter than the model's receptive field "
                                                            f"({self.min_samples} samples)")
        elif self.max_samples is not None and n > self.max_samples:
            out.update(drop_reason="too_long", drop_detail=f"{n / rate:.2f}s: longer than the model's input window "
                                                           f"({self.max_samples / rate:.1f} s)")
        elif n < self.min_len:
            out.update(drop_reason="too_short", drop_detail=f"{n / rate:.2f}s < {f.min_duration_s}s")
        elif self.max_len is not None and n > self.max_len:
            out.update(drop_reason="too_long", drop_detail=f"{n / rate:.2f}s > {f.max_duration_s}s")
        return out


def check_split(ds: Dataset, split: str, cfg: DatasetConfig, sampling_rate: int, training: bool,
                report: DropReport, min_samples: int = 0, max_samples: Optional[int] = None) -> Dataset:
    """Decode every clip once (or read it back from the cache), normalize its text (or check that it has a label),
    and keep only the usable rows (the rest go to `report`). `min_samples`: the shortest clip the model can take
    (its receptive field)."""
    target = next(t for t in (TEXT, LABEL, SEGMENTS) if t in ds.column_names)
    keep = ("int16" if training else "float32") if cfg.cache_audio else None
    decoded = decode_split(ds, split, sampling_rate, keep, cfg.num_proc)
    check = RowCheck(cfg, sampling_rate, training, min_samples, target, max_samples)

    # The text pass runs without the samples column (a map rewrites every column it is given); the samples are
    # joined back column-wise, which copies nothing.
    small = decoded.remove_columns([PCM]) if cfg.cache_audio else decoded
    checked = small.map(check, input_columns=[target, "num_samples", "peak", "audio_error", "audio_detail"],
                        desc=f"Checking text and durations ({split})")
    reasons = list(checked["drop_reason"])
    dropped = [i for i, r in enumerate(reasons) if r]
    if dropped:
        info = checked.select(dropped).select_columns([AUDIO, "drop_reason", "drop_detail"])
        for i, row in zip(dropped, info):
            report.add(split, i, audio_ref(row[AUDIO]), row["drop_reason"], row["drop_detail"])
    checked = checked.remove_columns(["drop_reason", "drop_detail", "audio_error", "audio_detail"])
    if cfg.cache_audio:
        checked = concatenate_datasets([checked, decoded.select_columns([PCM])], axis=1)
    return checked.select([i for i, r in enumerate(reasons) if not r])


def load_splits(cfg: DatasetConfig, wanted: Dict[str, bool], sampling_rate: int, report: DropReport,
                target: str = TEXT, min_samples: int = 0, max_samples: Optional[int] = None) -> Dict[str, Dataset]:
    """The named splits ({name: is_training}) with their `target` column (TEXT or LABEL), checked; raises naming
    the key when a split does not exist."""
    splits = load_source(cfg, target)
    out = {}
    for name, training in wanted.items():
        out[name] = check_split(whole(split_of(splits, name, cfg)), name, cfg, sampling_rate, training, report,
                                min_samples, max_samples)
        if len(out[name]) == 0:
            raise ConfigError(f"dataset '{cfg.name}' split '{name}': every example was dropped ({report.summary()})")
    return out


