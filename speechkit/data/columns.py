"""The column names every split has after loading, whatever the source calls them (conf/dataset `columns`), and
the two readers of a checked split's targets. A leaf: it imports nothing of speechkit."""

from __future__ import annotations

from typing import List

# The audio, and the target: a transcript, a class, or a recording's reference turns (an RTTM file's path, or the
# turns as JSON [[start, end, speaker], ...])
AUDIO, TEXT, LABEL, SEGMENTS = "audio", "text", "label", "segments"
TARGET_KEYS = {TEXT: "text", LABEL: "label", SEGMENTS: "rttm"}  # dataset.columns.<key> names the source's column
PCM = "pcm"  # the decoded clip at the model's rate (int16 or float32), when dataset.cache_audio is on
PCM_SCALE = 32767.0  # int16 full scale


def texts(ds) -> List[str]:
    """The normalized transcripts of a checked split."""
    return list(ds[TEXT])


def labels(ds) -> list:
    """The raw labels of a checked split (a string, or a list of strings, per clip)."""
    return list(ds[LABEL])
