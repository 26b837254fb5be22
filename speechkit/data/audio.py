"""Decoding one clip to mono float32 at the model's rate, with errors that say what is wrong.

torchcodec (FFmpeg) does the decoding, the down-mix and the resampling, for files on disk and for encoded
bytes stored in Arrow alike.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from speechkit.config import first_line


class AudioError(Exception):
    """A clip that cannot be used; `reason` is a short machine-readable tag for the drop report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def audio_ref(value: Any) -> str:
    """A human-readable name for a clip: its path when it has one."""
    if isinstance(value, Mapping):
        return str(value.get("path") or "<bytes>")
    return str(value)


def decode(value: Any, sampling_rate: int) -> np.ndarray:
    """Decode an Arrow audio cell ({"path", "bytes"} or {"array", "sampling_rate"}) or a path to mono float32."""
    from torchcodec.decoders import AudioDecoder  # imported here: loads FFmpeg's libraries

    if isinstance(value, Mapping) and value.get("array") is not None:
        return _from_array(np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"]), sampling_rate)
    path: Optional[str] = value.get("path") if isinstance(value, Mapping) else str(value)
    data: Optional[bytes] = value.get("bytes") if isinstance(value, Mapping) else None
    if data is None:
        if not path:
            raise AudioError("missing_file", "no path and no bytes")
        if not os.path.isfile(path):
            raise AudioError("missing_file", path)
        if os.path.getsize(path) == 0:
            raise AudioError("empty_audio", f"{path} is 0 bytes")
    try:
        decoder = AudioDecoder(data if data is not None else path, sample_rate=sampling_rate, num_channels=1)
    except Exception as exc:  # FFmpeg's errors come in several types; all mean "not audio we can read"
        raise AudioError("unreadable_audio", f"{audio_ref(value)}: {first_line(exc)}") from None
    try:
        array = decoder.get_all_samples().data
    except Exception as exc:  # a valid header with no frames behind it: an empty recording
        reason = "empty_audio" if "No audio frames" in str(exc) else "unreadable_audio"
        raise AudioError(reason, f"{audio_ref(value)}: {first_line(exc)}") from None
    array = array.numpy().reshape(-1).astype(np.float32, copy=False)
    if array.size == 0:
        raise AudioError("empty_audio", f"{audio_ref(value)} has no samples")
    return array


def open_recording(path: str, sampling_rate: int):
    """A long recording opened to be read window by window (transcribe.py, diarize.py): torchcodec's AudioDecoder,
    mono at `sampling_rate`; a ValueError naming the file when FFmpeg cannot read it."""
    from torchcodec.decoders import AudioDecoder

    try:
        return AudioDecoder(path, sample_rate=sampling_rate, num_channels=1)
    except Exception as exc:  # FFmpeg's errors come in several types: all mean "not audio we can read"
        raise ValueError(f"{path}: not readable audio ({first_line(exc)})") from None


def read_range(decoder, start_s: float, stop_s: float) -> np.ndarray:
    """The samples of an open recording played from `start_s` to `stop_s`, mono float32."""
    samples = decoder.get_samples_played_in_range(start_s, stop_s).data
    return samples.mean(dim=0).numpy().astype(np.float32, copy=False)


def _from_array(array: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Audio already decoded upstream (e.g. a Hub data set stored as arrays): mix down and resample."""
    if array.ndim == 2:  # (channels, samples) or (samples, channels): average the smaller axis
        array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
    if array.size == 0:
        raise AudioError("empty_audio", "array has no samples")
    if source_rate != target_rate:
        import torch
        from torchcodec.encoders import AudioEncoder
        from torchcodec.decoders import AudioDecoder

        # Round-trip through an in-memory WAV so FFmpeg's resampler is used, as for every other clip.
        wav = AudioEncoder(torch.from_numpy(array).unsqueeze(0), sample_rate=source_rate).to_tensor("wav")
        array = AudioDecoder(wav, sample_rate=target_rate).get_all_samples().data.numpy().reshape(-1)
    return array.astype(np.float32, copy=False)
