"""A request to the handler, in and out: `input_fn` (the body, JSON samples or audio bytes, as a mono clip) and
`output_fn` (the answer as JSON), with the limits every request is held to and `InferenceError`, the refusal with
its HTTP status.

Limits, from the environment (inference.* in the config; serve.py and deploy.py set them): SPEECHKIT_MAX_BODY_MB
(6), SPEECHKIT_MAX_AUDIO_S (300; none: no limit), checked before the body is parsed or decoded where it can be.
Nothing is unpickled: bodies are parsed as JSON or decoded as audio by FFmpeg (torchcodec, imported only then).

Bundled into the handler (code/inference.py, bundle.py): numpy and the standard library at the top.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import numpy as np

JSON_TYPES = ("application/json",)
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "audio/x-audio",
               "audio/mpeg", "audio/mp3", "audio/ogg", "audio/webm")
ACCEPT_TYPES = ("application/json", "*/*")


class InferenceError(ValueError):
    """A request that cannot be served; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _env_float(name: str, default: Optional[float]) -> Optional[float]:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in ("", "none", "null"):
        return None
    return float(value)


def max_body_bytes() -> int:
    return int((_env_float("SPEECHKIT_MAX_BODY_MB", 6.0) or 6.0) * 1024 * 1024)


def max_audio_s() -> Optional[float]:
    """The longest audio a request may hold (a few MB of compressed audio, or of JSON at a low rate, can be hours).
    Checked from the sample count or the file's header before decoding, and decoding stops there regardless."""
    return _env_float("SPEECHKIT_MAX_AUDIO_S", 300.0)


def _too_long(seconds: float, limit: float, bound: str = "") -> InferenceError:
    """`bound`: "at least ", "more than " when `seconds` is a bound, not the duration."""
    return InferenceError(f"audio of {bound}{seconds:.1f} s is over the limit of {limit:g} s (SPEECHKIT_MAX_AUDIO_S / "
                          "inference.max_audio_s): send it in shorter parts", 413)


def _media_type(value: Optional[str]) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------------------------- input_fn
def input_fn(input_data: Any, content_type: Optional[str], context: Any = None) -> dict:
    """The request body as {"array": mono float32, "sampling_rate": its rate}; raises InferenceError."""
    media = _media_type(content_type)
    if media not in JSON_TYPES + AUDIO_TYPES:
        raise InferenceError(f"unsupported content type '{content_type}': send application/json "
                             f"({{\"speech_array\": [...], \"sampling_rate\": N}}) or audio bytes "
                             f"({', '.join(AUDIO_TYPES)})", 415)
    body = input_data.encode() if isinstance(input_data, str) else bytes(input_data or b"")
    limit = max_body_bytes()
    if len(body) > limit:
        raise InferenceError(f"request body of {len(body)} bytes is over the limit of {limit} bytes "
                             "(SPEECHKIT_MAX_BODY_MB / inference.max_body_mb)", 413)
    if not body:
        raise InferenceError("empty request body: no audio")
    clip = _from_json(body) if media in JSON_TYPES else _from_audio_bytes(body)
    if clip["array"].size == 0:
        raise InferenceError("empty audio: no samples")
    return clip


def _not_a_number(constant: str):
    raise InferenceError(f"malformed JSON: {constant} is not a JSON number (samples and rate must be finite)")


_RATE = re.compile(rb'"sampling_rate"\s*:\s*(\d{4,6})(?![\d.eE])')
_ARRAY = re.compile(rb'"speech_array"\s*:\s*\[')


def _too_long_before_parsing(body: bytes) -> None:
    """A large body's duration from its bytes, before json.loads (which takes a tenth of a second per 4 MB and
    holds the interpreter meanwhile): the rate, and at least as many samples as there are commas in the array
    before its first `]` (plus one). Refused only when even that lower bound is over the limit."""
    limit = max_audio_s()
    last = body.rfind(b'"sampling_rate"')  # json.loads keeps the last of repeated keys
    found = _RATE.match(body, last) if last >= 0 else None
    rate = int(found.group(1)) if found else 0
    array = _ARRAY.search(body)
    if not (limit and array and 1000 <= rate <= 384000):
        return
    end = body.find(b"]", array.end())
    samples = body.count(b",", array.end(), end if end >= 0 else len(body)) + 1
    if samples / rate > limit:
        raise _too_long(samples / rate, limit, "at least ")


def _from_json(body: bytes) -> dict:
    if len(body) > 256 * 1024:
        _too_long_before_parsing(body)
    try:
        payload = json.loads(body, parse_constant=_not_a_number)  # NaN, Infinity: Python's extension, not JSON
    except InferenceError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InferenceError(f"malformed JSON: {err}") from None
    except RecursionError:
        raise InferenceError("malformed JSON: nested too deeply") from None
    except ValueError as err:  # an integer literal longer than Python converts (4300 digits)
        raise InferenceError(f"malformed JSON: {str(err).split(';')[0]}") from None
    if not isinstance(payload, dict):
        raise InferenceError("the JSON body must be an object {\"speech_array\": [...], \"sampling_rate\": N}")
    missing = [k for k in ("speech_array", "sampling_rate") if k not in payload]
    if missing:
        raise InferenceError(f"missing field(s) {', '.join(missing)}: send "
                             "{\"speech_array\": [floats], \"sampling_rate\": N}")
    rate = payload["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != int(rate) or not 1000 <= rate <= 384000:
        raise InferenceError(f"sampling_rate must be a whole number of Hz between 1000 and 384000, got {rate!r}")
    samples = payload["speech_array"]
    if not isinstance(samples, list):
        raise InferenceError("speech_array must be a list of numbers (one channel)")
    if not samples:
        raise InferenceError("empty audio: speech_array has no samples")
    limit = max_audio_s()
    if limit and len(samples) / rate > limit:  # from the count, before any sample is looked at
        raise _too_long(len(samples) / rate, limit)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in samples):
        raise InferenceError("speech_array must hold numbers only (one channel: a flat list)")
    try:
        with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused below
            array = np.asarray(samples, dtype=np.float32)
    except OverflowError:  # an integer too large for a float
        raise InferenceError("speech_array holds a number too large for a sample") from None
    if not np.all(np.isfinite(array)):
        raise InferenceError("speech_array holds NaN or infinite values")
    return {"array": array, "sampling_rate": int(rate)}


def _from_audio_bytes(body: bytes) -> dict:
    from torchcodec.decoders import AudioDecoder

    limit = max_audio_s()
    try:
        decoder = AudioDecoder(body, num_channels=1)
        declared = decoder.metadata.duration_seconds_from_header
        if limit and declared and declared > limit:  # refused from the header, nothing decoded
            raise _too_long(declared, limit)
        # Decoded up to just past the limit at most: a header that says less (or nothing) cannot make it more.
        samples = decoder.get_samples_played_in_range(stop_seconds=limit + 1) if limit else decoder.get_all_samples()
    except InferenceError:
        raise
    except Exception as err:  # FFmpeg's errors come in several types; all mean "not audio we can read"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "No audio frames" in str(err) or "No samples" in str(err):
            raise InferenceError(f"empty audio: the file holds no samples ({detail})") from None
        raise InferenceError(f"the body is not audio that can be decoded ({detail})") from None
    if limit and samples.duration_seconds > limit:
        raise _too_long(limit, limit, "more than ")
    return {"array": samples.data.numpy().reshape(-1).astype(np.float32, copy=False),
            "sampling_rate": int(samples.sample_rate)}


# -------------------------------------------------------------------------------------------- output_fn
def output_fn(prediction: dict, accept: Optional[str] = None, context: Any = None):
    media = _media_type(accept) or "application/json"
    if media not in ACCEPT_TYPES:
        raise InferenceError(f"unsupported accept type '{accept}': responses are application/json", 406)
    if os.environ.get("SPEECHKIT_RESPONSE", "details") == "transcript":  # a classifier's: its top label
        bare = prediction["text"] if "text" in prediction else prediction["labels"][0]["label"]
        return json.dumps(bare, ensure_ascii=False)
    return json.dumps(prediction, ensure_ascii=False, allow_nan=False)
