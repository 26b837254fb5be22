"""Targets read from files and cells, checked, and written: a leaf of the house (it imports nothing of speechkit),
shared by the demo corpus, the tasks and the commands.

- Who spoke when: a recording's reference turns from its RTTM file (pyannote.database's reader) or from JSON turns,
  checked against the recording; turns written as RTTM (pyannote.core's writer).
- Class labels: a cell of a label column as a list of labels.
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Tuple

from speechkit.config import first_line

Turn = Tuple[float, float, str]  # (start s, end s, speaker)
PAST_END_TOLERANCE_S = 0.5  # a turn ending this little past the recording's end is cut to it, not refused


def parse_labels(raw, multi_label: bool) -> List[str]:
    """A cell of the label column as a list of labels: a list as is, a string split at ";" when multi-label."""
    if isinstance(raw, (list, tuple)):
        return [str(x).strip() for x in raw if str(x).strip()]
    raw = str(raw).strip()
    return [p.strip() for p in raw.split(";") if p.strip()] if multi_label else [raw]


class BadReference(Exception):
    """A recording's reference that cannot be used; `reason` is the drop report's tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def read_turns(value: str, audio: str) -> List[Turn]:
    """A recording's reference turns: JSON turns, or the turns its RTTM file gives the recording (its URI is the
    audio file's name without extension)."""
    value = (value or "").strip()
    if value.startswith("["):
        return [(float(a), float(b), str(s)) for a, b, s in json.loads(value)]
    from pyannote.database.util import load_rttm

    if not os.path.isfile(value):
        raise BadReference("missing_rttm", f"{value} does not exist")
    uri = os.path.splitext(os.path.basename(audio))[0]
    try:
        by_uri = load_rttm(value)
    except Exception as err:  # pandas' parse errors, wrong column counts
        raise BadReference("unreadable_rttm", f"{value}: {first_line(err)}") from None
    if uri not in by_uri:
        raise BadReference("rttm_mismatch", f"{value} names recording(s) {sorted(by_uri)[:5]}, not '{uri}' (the "
                                            "audio file's name)")
    return [(round(float(seg.start), 3), round(float(seg.end), 3), str(label))  # RTTM's start + duration, exact
            for seg, _, label in by_uri[uri].itertracks(yield_label=True)]


def check_turns(turns: List[Turn], seconds: float, max_speakers: Optional[int]) -> List[Turn]:
    """The turns, sorted, each checked against the recording (`seconds` long); raises BadReference."""
    out = []
    for start, end, who in sorted(turns):
        if start < 0 or end <= start:
            raise BadReference("bad_turn", f"turn {start:.2f}-{end:.2f} s of {who}")
        if end > seconds + PAST_END_TOLERANCE_S:
            raise BadReference("turn_past_end", f"turn {start:.2f}-{end:.2f} s of {who} ends past the recording's "
                                                f"end ({seconds:.2f} s)")
        out.append((round(start, 3), round(min(end, seconds), 3), who))
    last_end = {}
    for start, end, who in out:
        if start < last_end.get(who, -1.0) - 1e-6:
            raise BadReference("overlapping_turns", f"{who} has two turns overlapping at {start:.2f} s")
        last_end[who] = max(end, last_end.get(who, 0.0))
    speakers = sorted({who for _, _, who in out})
    if max_speakers is not None and len(speakers) > max_speakers:
        raise BadReference("too_many_speakers", f"{len(speakers)} speakers > task.max_speakers={max_speakers}")
    return out


def to_annotation(turns: List[Turn], uri: str):
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for i, (start, end, who) in enumerate(turns):
        annotation[Segment(start, end), i] = who
    return annotation


def rttm_uri(name: str) -> str:
    """A recording's name as an RTTM file id: RTTM's fields are separated by white space, so white space within a
    name (`my meeting.wav`) is written as `_`."""
    return re.sub(r"\s+", "_", name.strip()) or "recording"


def write_rttm(turns: List[Turn], uri: str, path: str) -> None:
    """`turns` as RTTM at `path`, written whole or not at all (a failure leaves no empty file)."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        to_annotation(turns, rttm_uri(uri)).write_rttm(f)
    os.replace(partial, path)
