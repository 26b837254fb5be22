"""Data (conf/dataset): sources -> named splits -> one checking pass -> drop report -> torch datasets.

- columns.py      the column names every split has after loading (audio, text, label, segments), and their readers
- sources.py      an audio folder, a Hub data set or the demo corpus read into splits; carving a held-out split
- checking.py     the checking pass: each clip decoded once, checked, cached; the drop report
- dataset.py      the torch-facing dataset of a checked split (random crops drawn from the seed)
- samplers.py     batches of clips of similar length: a number of clips, or a budget of seconds
- streaming.py    dataset.streaming: the training split read as a stream, checked as it comes
- audio.py        one clip decoded to mono float32 at the model's rate (FFmpeg through torchcodec)
- text.py         transcript normalization (dataset.text)
- references.py   who spoke when (RTTM files, turns) and class labels read and checked: a leaf
- demo_corpus.py  the offline corpora spoken by espeak-ng

The names most callers need are importable from here (`from speechkit import data; data.load_splits(...)`).
"""

from speechkit.data.checking import DropReport, RowCheck, check_split, decode_split, load_splits
from speechkit.data.columns import AUDIO, LABEL, PCM, PCM_SCALE, SEGMENTS, TARGET_KEYS, TEXT, labels, texts
from speechkit.data.dataset import SpeechDataset, random_crop
from speechkit.data.sources import carve, load_source, split_of, whole

__all__ = ["AUDIO", "LABEL", "PCM", "PCM_SCALE", "SEGMENTS", "TARGET_KEYS", "TEXT", "DropReport", "RowCheck",
           "SpeechDataset", "carve", "check_split", "decode_split", "labels", "load_source", "load_splits",
           "random_crop", "split_of", "texts", "whole"]
