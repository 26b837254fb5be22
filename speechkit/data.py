"""Data loading (conf/dataset): sources -> named splits -> one checking pass -> drop report -> torch datasets.

Audio stays encoded in the source (a path or the file's bytes). One pass decodes every clip once to check it
(readable, not silent, duration) and, with `dataset.cache_audio` (the default), keeps the decoded samples (mono, at
the model's rate; int16 for training splits, half the disk; float32 for evaluation splits, so scores equal those of
the stock pipeline reading the file) in the datasets cache: an Arrow file that is memory-mapped, not loaded, keyed
by the source's fingerprint, each audio file's size and modification time and the sampling rate. Later epochs and
later runs read samples from it and never decode again; nothing large is held in RAM. With `cache_audio=false` only
a few numbers per row are kept and the loader decodes each clip again when it is batched.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from datasets import (Audio, ClassLabel, Dataset, DatasetDict, Features, IterableDataset, List as ListOf, Value,
                      concatenate_datasets, load_dataset)
from datasets.fingerprint import Hasher

from speechkit.audio import AudioError, audio_ref, decode
from speechkit.config import ConfigError, DatasetConfig, Source
from speechkit.text import TextNormalizer

log = logging.getLogger(__name__)

# Column names after mapping, whatever the source calls them: the audio, and the target: a transcript, a class, or a
# recording's reference turns (an RTTM file's path, or the turns as JSON [[start, end, speaker], ...])
AUDIO, TEXT, LABEL, SEGMENTS = "audio", "text", "label", "segments"
TARGET_KEYS = {TEXT: "text_column", LABEL: "label_column", SEGMENTS: "rttm_column"}
PCM = "pcm"  # the decoded clip at the model's rate (int16 or float32), when dataset.cache_audio is on
PCM_SCALE = 32767.0  # int16 full scale
AUDIO_CACHE_VERSION = 1  # bump when decoding changes, to invalidate cached audio


# ------------------------------------------------------------------------------------------ sources
def load_source(cfg: DatasetConfig, target: str = TEXT) -> DatasetDict:
    """Every split of the configured source, columns renamed to `audio` and `target` (`text`, the transcript, or
    `label`, the class), audio left encoded. A Hub source with dataset.streaming gives streams (IterableDatasetDict);
    a local folder's metadata is small and is read whole either way."""
    key = TARGET_KEYS[target]
    column = getattr(cfg, key)
    if cfg.source == Source.demo:
        from speechkit.demo_corpus import ensure_corpus, target_column

        splits = _load_audiofolder(ensure_corpus(cfg), "file_name", target_column(cfg), target, f"dataset.{key}")
    elif cfg.source == Source.audiofolder:
        if not cfg.path:
            raise ConfigError("dataset.path must name a local folder for dataset.source=audiofolder")
        splits = _load_audiofolder(os.path.expanduser(cfg.path), cfg.file_column, column, target, f"dataset.{key}")
    else:
        if not cfg.path:
            raise ConfigError("dataset.path must name a Hub data set (or a local one) for dataset.source=hub")
        # dataset.streaming: every split a stream (IterableDataset): nothing is downloaded ahead
        splits = load_dataset(cfg.path, cfg.config_name, revision=cfg.revision, data_dir=cfg.data_dir,
                              streaming=cfg.streaming)
        if target == SEGMENTS:
            splits = type(splits)({name: _select_segments(ds, cfg.audio_column, cfg.segment_columns, cfg.path)
                                   for name, ds in splits.items()})
        else:
            splits = type(splits)({name: _select_columns(ds, cfg.audio_column, column, target, key, cfg.path)
                                   for name, ds in splits.items()})
    return carve(splits, cfg)


def _load_audiofolder(root: str, file_column: str, text_column: str, target: str = TEXT,
                      key: str = "dataset.text_column") -> DatasetDict:
    """A folder in the audiofolder layout: root/metadata.csv (one split, `train`) or root/<split>/metadata.csv.

    The metadata is read with the csv builder, every column as a string (a transcript "12" stays text), and the
    file column is turned into the audio column; missing or broken files are caught by the checking pass.
    """
    if not os.path.isdir(root):
        raise ConfigError(f"dataset.path: {root} is not a directory")
    if os.path.isfile(os.path.join(root, "metadata.csv")):
        files = {"train": os.path.join(root, "metadata.csv")}
    else:
        files = {os.path.basename(os.path.dirname(p)): p for p in sorted(glob.glob(os.path.join(root, "*", "metadata.csv")))}
    if not files:
        raise ConfigError(f"dataset.path: no metadata.csv in {root} nor in its sub-folders (one per split)")
    splits = {}
    for split, csv_path in files.items():
        with open(csv_path, newline="") as f:
            header = next(csv.reader(f), [])
        ds = load_dataset("csv", data_files=csv_path, split="train", keep_default_na=False,
                          features=Features({name: Value("string") for name in header}))
        for column, what in ((file_column, "dataset.file_column"), (text_column, key)):
            if column not in ds.column_names:
                raise ConfigError(f"{csv_path} has no column '{column}' (columns: {ds.column_names}); set {what}")
        folder = os.path.dirname(os.path.abspath(csv_path))
        ds = ds.map(lambda f: {AUDIO: os.path.join(folder, f)}, input_columns=file_column)
        if target == SEGMENTS:  # an RTTM file named relative to its metadata.csv, like the audio
            ds = ds.map(lambda f: {text_column: os.path.join(folder, f) if f else ""}, input_columns=text_column)
        ds = ds.select_columns([AUDIO, text_column])
        ds = ds.rename_columns({text_column: target} if text_column != target else {})
        splits[split] = ds.cast_column(AUDIO, Audio(decode=False))
    return DatasetDict(splits)


def _with_columns(ds):
    """`ds` with its column names known: a stream's are only once its first rows are read."""
    return ds._resolve_features() if isinstance(ds, IterableDataset) and ds.features is None else ds


def _select_columns(ds: Dataset, audio_column: str, column: str, target: str, key: str, where: str) -> Dataset:
    ds = _with_columns(ds)
    for name, wanted in (("audio_column", audio_column), (key, column)):
        if wanted not in ds.column_names:
            raise ConfigError(f"dataset.{name}: {where} has no column '{wanted}' (columns: {ds.column_names})")
    ds = ds.select_columns([audio_column, column]).cast_column(audio_column, Audio(decode=False))
    feature = ds.features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, ClassLabel) or isinstance(inner, ClassLabel):  # class ids: their names are the labels
        names = feature if isinstance(feature, ClassLabel) else inner
        ds = ds.map(lambda v: {column: names.int2str(v)}, input_columns=column,
                    features=Features({**ds.features, column: ListOf(Value("string")) if inner else Value("string")}))
    return ds.rename_columns({k: v for k, v in ((audio_column, AUDIO), (column, target)) if k != v})


def _select_segments(ds, audio_column: str, segment_columns: List[str], where: str):
    """A Hub data set's reference turns (dataset.segment_columns: lists of starts, ends and speakers per recording)
    as one SEGMENTS column of JSON turns."""
    ds = _with_columns(ds)
    wanted = [audio_column, *segment_columns]
    for name in wanted:
        if name not in ds.column_names:
            what = "audio_column" if name == audio_column else "segment_columns"
            raise ConfigError(f"dataset.{what}: {where} has no column '{name}' (columns: {ds.column_names})")
    if len(segment_columns) != 3:
        raise ConfigError(f"dataset.segment_columns must name 3 columns (starts, ends, speakers), got "
                          f"{list(segment_columns)}")
    starts, ends, speakers = segment_columns

    def turns(a, b, who):
        return {SEGMENTS: json.dumps([[float(x), float(y), str(s)] for x, y, s in zip(a, b, who)])}

    ds = ds.select_columns(wanted).cast_column(audio_column, Audio(decode=False))
    features = Features({audio_column: ds.features[audio_column], SEGMENTS: Value("string")})
    ds = ds.map(turns, input_columns=[starts, ends, speakers], remove_columns=[starts, ends, speakers],
                features=features)
    return ds.rename_columns({audio_column: AUDIO} if audio_column != AUDIO else {})


def carve(splits: DatasetDict, cfg: DatasetConfig) -> DatasetDict:
    """Split one source split into train/test by ratio and seed (deterministic)."""
    c = cfg.carve
    if c.from_split is None:
        return splits
    if c.from_split not in splits:
        raise ConfigError(f"dataset.carve.from_split: no split '{c.from_split}' (splits: {list(splits)})")
    if not 0.0 < c.test_ratio < 1.0:
        raise ConfigError(f"dataset.carve.test_ratio must be between 0 and 1, got {c.test_ratio}")
    parts = splits[c.from_split].train_test_split(test_size=c.test_ratio, seed=c.seed, shuffle=True)
    out = {k: v for k, v in splits.items() if k != c.from_split}
    out[c.train_name], out[c.test_name] = parts["train"], parts["test"]
    return DatasetDict(out)


# ----------------------------------------------------------------------------------- checking pass
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
    not silent, long enough for the model (`min_samples`, its receptive field) and, for training, within the duration
    filters. Called with (target value, samples, peak, audio error, its detail); returns the row's new columns (`text`
    normalized, `drop_reason`, `drop_detail`). The checking pass and a stream (speechkit/streaming.py) share it."""

    def __init__(self, cfg: DatasetConfig, sampling_rate: int, training: bool, min_samples: int = 0,
                 target: str = TEXT):
        self.target, self.min_samples, self.sampling_rate = target, min_samples, sampling_rate
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
        elif n < self.min_len:
            out.update(drop_reason="too_short", drop_detail=f"{n / rate:.2f}s < {f.min_duration_s}s")
        elif self.max_len is not None and n > self.max_len:
            out.update(drop_reason="too_long", drop_detail=f"{n / rate:.2f}s > {f.max_duration_s}s")
        return out


def check_split(ds: Dataset, split: str, cfg: DatasetConfig, sampling_rate: int, training: bool,
                report: DropReport, min_samples: int = 0) -> Dataset:
    """Decode every clip once (or read it back from the cache), normalize its text (or check that it has a label),
    and keep only the usable rows (the rest go to `report`). `min_samples`: the shortest clip the model can take
    (its receptive field)."""
    target = next(t for t in (TEXT, LABEL, SEGMENTS) if t in ds.column_names)
    keep = ("int16" if training else "float32") if cfg.cache_audio else None
    decoded = decode_split(ds, split, sampling_rate, keep, cfg.num_proc)
    check = RowCheck(cfg, sampling_rate, training, min_samples, target)

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
                target: str = TEXT, min_samples: int = 0) -> Dict[str, Dataset]:
    """The named splits ({name: is_training}) with their `target` column (TEXT or LABEL), checked; raises naming
    the key when a split does not exist."""
    splits = load_source(cfg, target)
    out = {}
    for name, training in wanted.items():
        out[name] = check_split(whole(split_of(splits, name, cfg)), name, cfg, sampling_rate, training, report,
                                min_samples)
        if len(out[name]) == 0:
            raise ConfigError(f"dataset '{cfg.name}' split '{name}': every example was dropped ({report.summary()})")
    return out


def split_of(splits, name: str, cfg: DatasetConfig):
    """splits[name], or an error naming the keys that choose splits (and the carve, for a source of one split)."""
    if name not in splits:
        hint = "check dataset.train_split / dataset.eval_split / split"
        if len(splits) == 1:  # e.g. an audiofolder with one metadata.csv: everything is in one split
            hint = (f"the source has one split only: carve '{name}' out of it with "
                    f"dataset.carve.from_split={next(iter(splits))} (dataset.carve.test_ratio, default 0.2), "
                    f"or {hint}")
        raise ConfigError(f"split '{name}' not found in dataset '{cfg.name}' (splits: {sorted(splits)}); {hint}")
    return splits[name]


def whole(rows):
    """A split to check whole (evaluation, inspection): a stream (dataset.streaming) read once into an Arrow file."""
    if isinstance(rows, IterableDataset):
        return Dataset.from_generator(_rows_of, gen_kwargs={"stream": rows}, features=rows.features)
    return rows


def _rows_of(stream):
    yield from stream


def texts(ds: Dataset) -> List[str]:
    """The normalized transcripts of a checked split."""
    return list(ds[TEXT])


def labels(ds: Dataset) -> list:
    """The raw labels of a checked split (a string, or a list of strings, per clip)."""
    return list(ds[LABEL])


# ------------------------------------------------------------------------------ torch-facing dataset
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
    row): a training loader asks for `(epoch, row)` (batching.EpochTagged), so the draw is new every epoch and the
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
