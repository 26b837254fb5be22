"""Sources (conf/dataset): a local audio folder, a Hub data set or the synthesized demo corpus, read into named
splits with the audio left encoded (a path or the file's bytes) and the columns renamed (speechkit/data/columns.py);
a held-out split carved where the source has one split only."""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import List

from datasets import (Audio, ClassLabel, Dataset, DatasetDict, Features, IterableDataset, List as ListOf, Value,
                      load_dataset)

from speechkit.config import ConfigError, DatasetConfig, Source
from speechkit.data.columns import AUDIO, SEGMENTS, TARGET_KEYS, TEXT


# ------------------------------------------------------------------------------------------ sources
def load_source(cfg: DatasetConfig, target: str = TEXT) -> DatasetDict:
    """Every split of the configured source, columns renamed to `audio` and `target` (`text`, the transcript, or
    `label`, the class), audio left encoded. A Hub source with dataset.streaming gives streams (IterableDatasetDict);
    a local folder's metadata is small and is read whole either way."""
    key = TARGET_KEYS[target]  # the dataset.columns entry naming the target's column
    column = getattr(cfg.columns, key)
    if cfg.source == Source.demo:
        from speechkit.data.demo_corpus import ensure_corpus, target_column

        splits = _load_audiofolder(ensure_corpus(cfg), "file_name", target_column(cfg), target,
                                   f"dataset.columns.{key}")
    elif cfg.source == Source.audiofolder:
        if not cfg.path:
            raise ConfigError("dataset.path must name a local folder for dataset.source=audiofolder")
        splits = _load_audiofolder(os.path.expanduser(cfg.path), cfg.columns.file, column, target,
                                   f"dataset.columns.{key}")
    else:
        if not cfg.path:
            raise ConfigError("dataset.path must name a Hub data set (or a local one) for dataset.source=hub")
        # dataset.streaming: every split a stream (IterableDataset): nothing is downloaded ahead
        splits = load_dataset(cfg.path, cfg.config_name, revision=cfg.revision, data_dir=cfg.data_dir,
                              streaming=cfg.streaming)
        if target == SEGMENTS:
            splits = type(splits)({name: _select_segments(ds, cfg.columns.audio, cfg.columns.segments, cfg.path)
                                   for name, ds in splits.items()})
        else:
            splits = type(splits)({name: _select_columns(ds, cfg.columns.audio, column, target, key, cfg.path)
                                   for name, ds in splits.items()})
    return carve(splits, cfg)


def _load_audiofolder(root: str, file_column: str, text_column: str, target: str = TEXT,
                      key: str = "dataset.columns.text") -> DatasetDict:
    """A folder in the audiofolder layout: root/metadata.csv (one split, `train`) or root/<split>/metadata.csv.

    The metadata is read with the csv builder, every column as a string (a transcript "12" stays text), and the
    file column is turned into the audio column; missing or broken files are caught by the checking pass.
    """
    if not os.path.isdir(root):
        raise ConfigError(f"dataset.path: {root} is not a directory")
    if os.path.isfile(os.path.join(root, "metadata.csv")):
        files = {"train": os.path.join(root, "metadata.csv")}
    else:
        files = {os.path.basename(os.path.dirname(p)): p
                 for p in sorted(glob.glob(os.path.join(root, "*", "metadata.csv")))}
    if not files:
        raise ConfigError(f"dataset.path: no metadata.csv in {root} nor in its sub-folders (one per split)")
    splits = {}
    for split, csv_path in files.items():
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which is not part of the first name
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        ds = load_dataset("csv", data_files=csv_path, split="train", keep_default_na=False, encoding="utf-8-sig",
                          features=Features({name: Value("string") for name in header}))
        for column, what in ((file_column, "dataset.columns.file"), (text_column, key)):
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
    for name, wanted in (("audio", audio_column), (key, column)):
        if wanted not in ds.column_names:
            raise ConfigError(f"dataset.columns.{name}: {where} has no column '{wanted}' (columns: {ds.column_names})")
    ds = ds.select_columns([audio_column, column]).cast_column(audio_column, Audio(decode=False))
    feature = ds.features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, ClassLabel) or isinstance(inner, ClassLabel):  # class ids: their names are the labels
        names = feature if isinstance(feature, ClassLabel) else inner
        ds = ds.map(lambda v: {column: names.int2str(v)}, input_columns=column,
                    features=Features({**ds.features, column: ListOf(Value("string")) if inner else Value("string")}))
    return ds.rename_columns({k: v for k, v in ((audio_column, AUDIO), (column, target)) if k != v})


def _select_segments(ds, audio_column: str, segment_columns: List[str], where: str):
    """A Hub data set's reference turns (dataset.columns.segments: lists of starts, ends and speakers per recording)
    as one SEGMENTS column of JSON turns."""
    ds = _with_columns(ds)
    wanted = [audio_column, *segment_columns]
    for name in wanted:
        if name not in ds.column_names:
            what = "audio" if name == audio_column else "segments"
            raise ConfigError(f"dataset.columns.{what}: {where} has no column '{name}' (columns: {ds.column_names})")
    if len(segment_columns) != 3:
        raise ConfigError(f"dataset.columns.segments must name 3 columns (starts, ends, speakers), got "
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


