"""task=diarization: who spoke when, end to end as SUPERB's speaker-diarization task does it.

The encoder (a wav2vec2-like one) gets a frame-level head (`AutoModelForAudioFrameClassification`) with one output
per speaker (`task.max_speakers`), each a per-frame probability that this speaker talks. Training takes a random
`task.chunk_s` chunk of each recording every epoch (SpeechDataset's crop) and scores it with a permutation-invariant
loss: binary cross-entropy under the order of speakers that fits best, since a chunk's speakers have no natural order.

A whole recording is read in `chunk_s` windows that overlap by half; each window's speakers are matched to the
running result over the overlap (the order that agrees best), probabilities are averaged, thresholded
(`task.threshold`), and turns shorter than `task.min_turn_s` removed (gaps as short filled). The turns become a
pyannote.core Annotation (RTTM out) and are scored by pyannote.metrics' DER (missed speech, false alarm, speaker
confusion) with `task.collar_s` (pyannote's convention: the collar's whole width, half on each side of a reference
boundary) and `task.skip_overlap`. The best checkpoint has the lowest DER.

References: an RTTM file per recording (audiofolder: `dataset.columns.rttm`) or turns in columns (Hub data sets:
`dataset.columns.segments`), read and checked per recording (speechkit/data/references.py): an RTTM that is missing
or names another recording, a turn past the recording's end, overlapping turns of one speaker, a training recording
with more speakers than the model has outputs: each dropped and reported, naming the file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Value

from speechkit import data
from speechkit.config import ConfigError, DiarizationConfig
from speechkit.data.audio import audio_ref
from speechkit.data.references import BadReference, Turn, check_turns, read_turns, to_annotation
from speechkit.tasks.base import Score, Task
from speechkit.tasks.scoring import EvalResult

log = logging.getLogger(__name__)

SETTINGS = "speechkit_diarization"  # the model config's entry holding the task's inference and scoring settings


def require_pyannote() -> None:
    try:
        import pyannote.core  # noqa: F401
        import pyannote.metrics  # noqa: F401
    except ImportError:
        raise ConfigError("task=diarization needs pyannote.core and pyannote.metrics: "
                          "pip install -e '.[diarization]' (./install.sh dev has them)") from None


# ------------------------------------------------------------------------------------------ frames & loss
def frame_targets(turns: List[Turn], speakers: List[str], offset_s: float, frames: int, hop_s: float,
                  max_speakers: int, speed: float = 1.0) -> torch.Tensor:
    """(frames, max_speakers): 1 where the speaker (in `speakers` order) talks at the frame's centre. `speed`: the
    clip was sped up by this factor (speed perturbation), so its times are the recording's divided by it."""
    target = torch.zeros(frames, max_speakers)
    centres = (offset_s + (np.arange(frames) + 0.5) * hop_s) * speed
    for start, end, who in turns:
        active = (centres >= start) & (centres < end)
        if active.any():
            target[torch.from_numpy(active), speakers.index(who)] = 1.0
    return target


def pit_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over frames and speakers under each recording's best order of the target speakers (the
    permutation-invariant loss): logits and targets (batch, frames, speakers), mask (batch, frames)."""
    speakers = logits.shape[-1]
    orders = torch.tensor(list(itertools.permutations(range(speakers))), device=logits.device)  # (P, S)
    permuted = targets[:, :, orders]  # (B, T, P, S)
    bce = F.binary_cross_entropy_with_logits(logits.float().unsqueeze(2).expand_as(permuted), permuted,
                                             reduction="none").mean(-1)  # (B, T, P)
    m = mask.float().unsqueeze(-1)
    per_order = (bce * m).sum(1) / m.sum(1).clamp(min=1)  # (B, P)
    return per_order.min(dim=1).values.mean()


class FrameTargets:
    """A batch's frame targets, built from each chunk's recording turns and where the chunk starts, and the mask of
    the frames each chunk really has (a shorter chunk's last frames are padding)."""

    def __init__(self, family, config, sampling_rate: int, max_speakers: int):
        self.family, self.config, self.rate, self.max_speakers = family, config, sampling_rate, max_speakers
        self.hop_s = family.frame_hop(config) / sampling_rate

    def frames(self, samples: int) -> int:
        return self.family.output_frames(self.config, samples, self.rate)

    def __call__(self, items: List[dict], batch: dict) -> dict:
        width = self.frames(max(len(x["input_values"]) for x in items))
        lengths = [min(self.frames(len(x["input_values"])), width) for x in items]
        labels = torch.stack([
            frame_targets(x["labels"], sorted({w for _, _, w in x["labels"]}), x.get("offset", 0) / self.rate, width,
                          self.hop_s, self.max_speakers, x.get("speed", 1.0)) for x in items])
        return {"labels": labels, "frame_mask": torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]}


# ---------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def speaker_activity(model, inputs, frames: Callable[[int], int], read: Callable[[int, int], np.ndarray], total: int,
                     window: int, batch_size: int = 8, progress=None) -> np.ndarray:
    """Per-frame probabilities (frames, max_speakers) for a whole recording of `total` samples, read `window`
    samples at a time (`read(start, count)`) with windows overlapping by half; each window's speakers put in the
    order that agrees best with what the windows before it found over their overlap. `inputs`: the model's
    ModelInputs; `frames(samples)`: a clip's output frames. Memory: one batch of windows, and the frame grid."""
    config = model.config
    hop = config.inputs_to_logits_ratio  # samples per output frame (the feature encoder's strides: 320, 20 ms)
    step = max(hop, (window // 2) // hop * hop)
    starts = list(range(0, max(total - window, 0) + 1, step))
    if starts[-1] + window < total:
        starts.append(starts[-1] + step)
    grid = frames(total) + window // hop + 1
    speakers = config.num_labels
    summed, counts = np.zeros((grid, speakers)), np.zeros(grid)
    orders = list(itertools.permutations(range(speakers)))
    device = next(model.parameters()).device
    for first in range(0, len(starts), batch_size):
        group = starts[first:first + batch_size]
        clips = [read(s, min(window, total - s)) for s in group]
        keep = [i for i, c in enumerate(clips) if frames(len(c)) > 0]
        if not keep:
            continue
        batch = inputs([clips[i] for i in keep])
        probs = torch.sigmoid(model(**{k: v.to(device) for k, v in inputs.model_inputs(batch).items()}).logits
                              .float()).cpu().numpy()
        for row, i in enumerate(keep):
            n = frames(len(clips[i]))
            p = probs[row, :n]
            at = group[i] // hop
            seen = counts[at:at + n] > 0
            if seen.any():  # link: the order of this window's speakers that agrees best with the overlap so far
                known = summed[at:at + n][seen] / counts[at:at + n][seen, None]
                agreement = [float((known * p[seen][:, o] + (1 - known) * (1 - p[seen][:, o])).sum()) for o in orders]
                p = p[:, orders[int(np.argmax(agreement))]]
            summed[at:at + n] += p
            counts[at:at + n] += 1
        if progress is not None:
            progress(min(group[-1] + window, total), total)
    used = frames(total)
    return summed[:used] / np.maximum(counts[:used], 1)[:, None]


def turns_from_activity(activity: np.ndarray, hop_s: float, threshold: float, min_turn_s: float) -> List[Turn]:
    """Thresholded activity as turns, speakers named SPEAKER_00, SPEAKER_01... by first appearance; gaps shorter than
    `min_turn_s` filled, then turns shorter than it removed."""
    raw = []
    for s in range(activity.shape[1]):
        active = np.concatenate([[False], activity[:, s] > threshold, [False]])
        edges = np.flatnonzero(np.diff(active.astype(np.int8)))
        runs = [[a * hop_s, b * hop_s] for a, b in zip(edges[::2], edges[1::2])]
        merged = []
        for run in runs:
            if merged and run[0] - merged[-1][1] < min_turn_s:
                merged[-1][1] = run[1]
            else:
                merged.append(run)
        raw += [(a, b, s) for a, b in merged if b - a >= min_turn_s]
    names = {}
    for _, _, s in sorted(raw):
        names.setdefault(s, f"SPEAKER_{len(names):02d}")
    return sorted((round(a, 3), round(b, 3), names[s]) for a, b, s in raw)


def der(references, hypotheses, uris, durations, collar: float, skip_overlap: bool) -> Tuple[dict, List[dict]]:
    """pyannote.metrics' DER, in total (over all scored time) and per recording, with its parts."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    rows, sums = [], {"total": 0.0, "missed detection": 0.0, "false alarm": 0.0, "confusion": 0.0}
    for ref, hyp, uri, seconds in zip(references, hypotheses, uris, durations):
        parts = metric(to_annotation(ref, uri), to_annotation(hyp, uri), detailed=True,
                       uem=Timeline([Segment(0, seconds)], uri=uri))
        for k in sums:
            sums[k] += parts[k]
        total = max(parts["total"], 1e-9)
        rows.append({"recording": uri, "der": round(parts["diarization error rate"], 4),
                     "missed": round(parts["missed detection"] / total, 4),
                     "false_alarm": round(parts["false alarm"] / total, 4),
                     "confusion": round(parts["confusion"] / total, 4), "speech_s": round(parts["total"], 2),
                     "speakers": len({w for _, _, w in ref}), "found": len({w for _, _, w in hyp})})
    total = max(sums["total"], 1e-9)
    scores = {"der": (sums["missed detection"] + sums["false alarm"] + sums["confusion"]) / total,
              "missed": sums["missed detection"] / total, "false_alarm": sums["false alarm"] / total,
              "confusion": sums["confusion"] / total}
    return scores, rows


# ----------------------------------------------------------------------------------------------- the task
class Diarization(Task):
    name = "diarization"
    target = data.SEGMENTS
    unit = "recordings"
    # the tag pyannote's segmentation models carry on the Hub (transformers has no diarization pipeline)
    pipeline = "voice-activity-detection"
    card_kind = "A speaker diarization (per-frame speaker activity)"
    card_usage = ('from transformers import AutoModelForAudioFrameClassification\n'
                  'model = AutoModelForAudioFrameClassification.from_pretrained("<this folder or repo>")\n'
                  '# who spoke when, as RTTM: python diarize.py model_dir=<this folder> audio=a.wav')
    inventory_kind = "labels"  # recordings by their number of speakers

    def __init__(self, cfg: Optional[DiarizationConfig] = None, dataset=None, model=None):
        require_pyannote()
        super().__init__(cfg or DiarizationConfig(), dataset, model)
        # the rate the checking pass decoded at (the model's): num_samples' unit
        self.rows_rate = model.sampling_rate if model is not None else 16000

    @classmethod
    def scores(cls, cfg) -> List[Score]:
        return [Score("eval_der", "DER", "der", lower_is_better=True)]

    @classmethod
    def extras(cls, cfg) -> List[str]:
        return ["diarization"]

    # ------------------------------------------------------------------------ training: targets and model
    def _checked(self, rows, split: str, report, max_speakers: Optional[int], rate: int):
        """Each row's turns read and checked (JSON turns in the segments column); bad references dropped, reported.
        `max_speakers`: set for training, where a recording with more speakers is dropped too; evaluation (None) scores
        such a recording, with a warning."""
        files = rows.select_columns([data.AUDIO])[data.AUDIO]
        seconds = np.asarray(rows["num_samples"], dtype=np.float64) / rate
        keep, turns, several = [], [], []
        for i, value in enumerate(rows[data.SEGMENTS]):
            audio = audio_ref(files[i])
            try:
                checked = check_turns(read_turns(value, audio), float(seconds[i]), max_speakers)
            except BadReference as bad:
                report.add(split, i, audio, bad.reason, bad.detail)
                continue
            if len({w for _, _, w in checked}) > self.cfg.max_speakers:
                several.append(os.path.basename(audio))
            keep.append(i)
            turns.append(json.dumps(checked))
        if several:
            log.warning("split '%s': %d recording(s) have more speakers than the model's %d outputs (%s): they are "
                        "scored, and their extra speakers count as errors", split, len(several), self.cfg.max_speakers,
                        ", ".join(several[:5]))
        dropped = len(rows) - len(keep)
        if dropped:
            log.warning("split '%s': %d recording(s) with unusable references left out (drop_report.jsonl)", split,
                        dropped)
        if not keep:
            raise ConfigError(f"split '{split}': no recording has a usable reference ({report.summary()})")
        rows = rows.select(keep)
        return rows.remove_columns([data.SEGMENTS]).add_column(data.SEGMENTS, turns, feature=Value("string"))

    def fit_targets(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """No vocabulary to fit: the references are read and checked (a training recording with more speakers than
        task.max_speakers is dropped; an evaluation one is scored)."""
        rate = self.rows_rate
        if "num_samples" not in train_rows.column_names:  # a stream's: its recordings are checked as they come
            return train_rows, self._checked(eval_rows, splits[1], report, None, rate)
        return (self._checked(train_rows, splits[0], report, self.cfg.max_speakers, rate),
                self._checked(eval_rows, splits[1], report, None, rate))

    def describe_targets(self) -> str:
        return f"up to {self.cfg.max_speakers} speakers per window"

    def head_config(self) -> dict:
        return {"num_labels": self.cfg.max_speakers}

    def prepare(self, model, run_dir: str) -> None:
        """The task's inference and scoring settings travel in the model's config (diarize.py, evaluate.py)."""
        setattr(model.config, SETTINGS, {k: getattr(self.cfg, k) for k in
                                         ("chunk_s", "threshold", "min_turn_s", "collar_s", "skip_overlap")})

    def bind(self, model, feature_extractor) -> None:
        super().bind(model, feature_extractor)
        self.rows_rate = feature_extractor.sampling_rate
        self.crop = int(self.cfg.chunk_s * feature_extractor.sampling_rate)

    # ---------------------------------------------------------------------------------- a saved model
    @classmethod
    def restore(cls, model, model_dir: str, options: dict) -> "Diarization":
        """A saved diarizer, with the settings it was trained with; `collar_s`, `skip_overlap` (evaluate.py) override
        the scoring's."""
        settings = dict(getattr(model.config, SETTINGS, None) or {})
        settings.update({k: options[k] for k in ("collar_s", "skip_overlap") if options.get(k) is not None})
        task = cls(DiarizationConfig(max_speakers=model.config.num_labels, **settings))
        task.bind(model, cls.saved_feature_extractor(model_dir))
        return task

    def check_eval_rows(self, rows, split: str, report):
        return self._checked(rows, split, report, None, self.sampling_rate)

    # ----------------------------------------------------------------------------- data and scoring
    def targets(self, rows) -> list:
        return [[tuple(t) for t in json.loads(v)] for v in rows[data.SEGMENTS]]

    def target_of(self, value, audio: str = "") -> Tuple[Optional[list], str, str]:
        """A streamed recording's turns (dataset.streaming), or why it has none."""
        try:
            turns = check_turns(read_turns(value, audio), float("inf"), self.cfg.max_speakers)
        except BadReference as bad:
            return None, bad.reason, bad.detail
        return turns, "", ""

    def batch_targets(self) -> FrameTargets:
        return FrameTargets(self.family, self.config, self.sampling_rate, self.cfg.max_speakers)

    def loss(self, out, batch: dict):
        """The permutation-invariant loss over the chunk's frames (logits past the targets' frames, padding of a
        filter-bank input, are left out)."""
        width = batch["labels"].shape[1]
        return pit_loss(out.logits[:, :width], batch["labels"], batch["frame_mask"])

    def frames(self, samples: int) -> int:
        return self.family.output_frames(self.config, samples, self.sampling_rate)

    def diarize(self, model, read: Callable[[int, int], np.ndarray], total: int, progress=None) -> List[Turn]:
        """A whole recording's turns (`read(start, count)` gives its samples)."""
        activity = speaker_activity(model, self.inputs, self.frames, read, total, self.crop, progress=progress)
        hop_s = self.family.frame_hop(self.config) / self.sampling_rate  # seconds per output frame
        return turns_from_activity(activity, hop_s, self.cfg.threshold, self.cfg.min_turn_s)

    def evaluate(self, model, loader, dataset, accelerator) -> EvalResult:
        """Every evaluation recording diarized whole (each process its share), scored by DER."""
        from accelerate.utils import gather_object

        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        mine = []
        for row in range(accelerator.process_index, len(dataset), accelerator.num_processes):
            audio = dataset[row]["input_values"]
            mine.append((row, self.diarize(unwrapped, lambda s, n: audio[s:s + n], len(audio))))
        if was_training:
            unwrapped.train()
        found = dict(gather_object(mine))  # in one process: its own list
        rows = sorted(found)
        files = dataset.ds.select_columns([data.AUDIO])[data.AUDIO]
        uris = [os.path.splitext(os.path.basename(audio_ref(files[r])))[0] for r in rows]
        references = [dataset.targets[r] for r in rows]
        hypotheses = [found[r] for r in rows]
        seconds = [float(dataset.lengths[r]) / self.sampling_rate for r in rows]
        scores, per_recording = der(references, hypotheses, uris, seconds, self.cfg.collar_s, self.cfg.skip_overlap)
        metrics = {"eval_der": scores["der"], "eval_missed": scores["missed"],
                   "eval_false_alarm": scores["false_alarm"], "eval_confusion": scores["confusion"],
                   "eval_recordings": len(rows)}
        summary = (f"DER {scores['der']:.4f} (missed {scores['missed']:.4f}, false alarm {scores['false_alarm']:.4f}, "
                   f"confusion {scores['confusion']:.4f}; collar {self.cfg.collar_s:g} s, overlap "
                   f"{'skipped' if self.cfg.skip_overlap else 'scored'})")
        predictions = [{**r, "reference": json.dumps(ref), "hypothesis": json.dumps(hyp)}
                       for r, ref, hyp in zip(per_recording, references, hypotheses)]
        self.last_turns = dict(zip(uris, zip(references, hypotheses)))
        return EvalResult(metrics=metrics, rank=(scores["der"],), objective=scores["der"], summary=summary,
                          rows=rows, predictions=predictions)

    def report_sections(self, result: EvalResult, ids: List[str], durations, audio=None, kept: str = "") -> list:
        """report.html: scores, the per-recording table, and every recording's reference and hypothesis turns on one
        timeline with its audio, the worst first."""
        from speechkit.report import esc, table, timeline

        columns = ["der", "missed", "false_alarm", "confusion", "speech_s", "speakers", "found"]
        rows = [[os.path.basename(i), *(p[c] for c in columns)] for i, p in zip(ids, result.predictions)]
        audio = audio or {}
        timelines = "".join(
            timeline(os.path.basename(ids[k]), float(durations[k]), [tuple(t) for t in json.loads(p["reference"])],
                     [tuple(t) for t in json.loads(p["hypothesis"])], audio.get(k),
                     f"DER {p['der']:.3f} (missed {p['missed']:.3f}, false alarm {p['false_alarm']:.3f}, confusion "
                     f"{p['confusion']:.3f}), {p['speakers']} speakers, {p['found']} found")
            for k, p in ((k, result.predictions[k]) for k in self.report_clips(result)))
        return [("", f"<p>{esc(result.summary)}</p>"),
                ("Per recording", table(["recording", *columns], rows, [False] + [True] * len(columns))),
                ("Who spoke when, per recording (reference above, speechkit below), the worst first",
                 f"<p>{esc(kept)} Click a turn to hear it.</p>{timelines}")]

    def report_clips(self, result: EvalResult) -> List[int]:
        """Every recording, the highest DER first."""
        return sorted(range(len(result.predictions)), key=lambda k: -float(result.predictions[k]["der"]))

    def examples(self, result: EvalResult, n: int) -> str:
        lines = [f"{'recording':<24} {'DER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'spk':>4} {'found':>5}"]
        for p in result.predictions[:n]:
            lines.append(f"{p['recording'][:24]:<24} {p['der']:>7.3f} {p['missed']:>7.3f} {p['false_alarm']:>7.3f} "
                         f"{p['confusion']:>7.3f} {p['speakers']:>4} {p['found']:>5}")
        return "\n".join(lines)

    # --------------------------------------------------------------------------------------------- inspection
    def inventory(self, rows) -> Counter:
        """Recordings by their number of speakers."""
        return Counter(_speakers(v, audio_ref(a)) for v, a in zip(rows[data.SEGMENTS], rows[data.AUDIO]))


def _speakers(value, audio: str) -> str:
    try:
        return f"{len({who for _, _, who in read_turns(value, audio)})} speakers"
    except BadReference as bad:
        return f"unusable reference ({bad.reason})"
