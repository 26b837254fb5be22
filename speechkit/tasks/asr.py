"""task=asr: speech recognition, scored by WER (lower is better; CER breaks ties) on the dataset's own text
normalization (dataset.text).

The task has two kinds of head, each one module, chosen by the model's family (speechkit/models/): a CTC head over
characters (ctc.py: wav2vec2-like encoders, w2v-BERT), or a sequence-to-sequence model that generates tokens
(seq2seq.py: Whisper). What they share lives here: the facts the house asks for, the scores, the hallucination
probe, the report and the inventory; the rest is the head kind's (its targets, tokenizer or vocab, decoding, what
ships)."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional, Tuple

import jiwer
import numpy as np

from speechkit import data
from speechkit.data.text import TextNormalizer
from speechkit.kinds import kind_class
from speechkit.tasks.base import Score, Task
from speechkit.tasks.scoring import EvalResult


PROBE_S = 3.0  # seconds of each hallucination-probe clip
PROBE_NOISE_RMS = 0.01  # white noise at -40 dB of full scale


def error_rates(references: List[str], hypotheses: List[str]) -> dict:
    return {"wer": jiwer.wer(list(references), list(hypotheses)), "cer": jiwer.cer(list(references), list(hypotheses))}


class ProbeClips:
    """task.hallucination_probe: clips with nothing to transcribe, `count` of silence then `count` of white noise,
    the same in every run (seeded), shaped as a dataset the evaluation loader takes."""

    def __init__(self, count: int, seconds: float, sampling_rate: int):
        rng = np.random.default_rng(0)
        samples = int(seconds * sampling_rate)
        self.clips = [np.zeros(samples, np.float32) for _ in range(count)] + \
            [(rng.standard_normal(samples) * PROBE_NOISE_RMS).astype(np.float32) for _ in range(count)]
        self.kinds = ["silence"] * count + ["noise"] * count
        self.lengths = np.full(len(self.clips), samples, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        return {"input_values": self.clips[i], "index": int(i), "offset": 0}


class SpeechRecognition(Task):
    name = "asr"
    target = data.TEXT  # the normalized transcript
    unit = "utterances"
    pipeline = "automatic-speech-recognition"
    card_usage = ('from transformers import pipeline\n'
                  'asr = pipeline("automatic-speech-recognition", model="<this folder or repo>")\n'
                  'print(asr("clip.wav")["text"])')
    inventory_kind = "characters"
    labels_to_model = True  # both kinds of model compute their loss from the labels themselves

    def __init__(self, cfg, dataset=None, model=None):
        super().__init__(cfg, dataset, model)
        normalizer = TextNormalizer(dataset.text) if dataset is not None else None
        self.normalize = (lambda t: normalizer(t).text) if normalizer else None  # the transcripts' normalization
        self.kind = None  # the head kind (speechkit/kinds/), once the model's head is known (model_config, restore)
        self.probe: Optional[dict] = None  # the last evaluation's probe hypotheses
        self._probe_clips: Optional[ProbeClips] = None

    @classmethod
    def scores(cls, cfg) -> List[Score]:
        scores = [Score("eval_wer", "WER", "wer", lower_is_better=True),
                  Score("eval_cer", "CER", "cer", lower_is_better=True)]
        if cfg.hallucination_probe:
            scores.append(Score("eval_probe_words", "probe words per clip", None, lower_is_better=True))
        return scores

    @classmethod
    def extras(cls, cfg) -> List[str]:
        return ["lm"] if cfg.decoder.type == "kenlm" else []

    @property
    def card_kind(self) -> str:
        return self.kind.card_kind

    @property
    def processor(self):
        return self.kind.processor

    # ---------------------------------------------------------------------------- training: targets and model
    def model_config(self, model_cfg):
        """The checkpoint's config and its head, which decides the head kind (speechkit/kinds/); refused before any
        data when the model has none of the task's heads, or cannot do what is asked of it (the kind's rules)."""
        config, head = super().model_config(model_cfg)
        if self.kind is None or self.kind.name != head:
            self.kind = kind_class(head)(self)
        self.kind.check_model(config, self.family)
        return config, head

    def fit_targets(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        return self.kind.fit(train_rows, eval_rows, splits, report, run_dir, is_main)

    def describe_targets(self) -> str:
        return self.kind.describe()

    def head_config(self) -> dict:
        return self.kind.head_config()

    def prepare(self, model, run_dir: str) -> None:
        self.kind.prepare(model, run_dir)

    def forward(self, model, batch: dict):
        return self.kind.forward(model, batch, super().forward(model, batch))

    # ---------------------------------------------------------------------------------------- a saved model
    @classmethod
    def restore(cls, model, model_dir: str, options: dict) -> "SpeechRecognition":
        """A saved model; `options` (evaluate.py): the data set to normalize the hypotheses as (`dataset`),
        `whisper_normalizer`, `hallucination_probe`."""
        from speechkit.config import AsrConfig
        from speechkit.models import family_of, head_of

        cfg = AsrConfig(whisper_normalizer=bool(options.get("whisper_normalizer")),
                        hallucination_probe=int(options.get("hallucination_probe") or 0))
        task = cls(cfg, dataset=options.get("dataset"))
        task.family = family_of(model.config.model_type)
        task.kind = kind_class(head_of(model.config))(task)
        task.kind.restore(model, model_dir)
        return task

    def check_eval_rows(self, rows, split: str, report):
        return self.kind.check_eval_rows(rows, split, report)

    def save(self, path: str) -> None:
        self.processor.save_pretrained(path)

    # ------------------------------------------------------------------------------------------ data and scoring
    def targets(self, rows) -> list:
        return self.kind.targets(rows)

    def target_of(self, text: str, audio: str = ""):
        return self.kind.target_of(text)

    def batch_targets(self):
        return self.kind.batch_targets()

    def evaluate(self, model, loader, dataset, accelerator) -> EvalResult:
        """The model's transcripts of the split (the head kind's decoding), scored; with task.hallucination_probe,
        the words it emits on clips of silence and noise too."""
        hypotheses, greedy, loss, gathered = self.kind.decode(model, loader, accelerator)
        rows = sorted(hypotheses)
        texts = data.texts(dataset.ds)
        result = self._result(loss, gathered, rows, [texts[r] for r in rows], [hypotheses[r] for r in rows],
                              [greedy[r] for r in rows] if greedy is not None else None)
        if self.cfg.hallucination_probe:
            self._probe(model, accelerator, result)
        return result

    def rescored(self, result: EvalResult, hypotheses: List[str]) -> EvalResult:
        """`result` with new hypotheses for its rows (a re-tuned decoder's), everything else kept."""
        again = self._result(result.metrics["eval_loss"], result.metrics["eval_gathered"], result.rows,
                             [p["reference"] for p in result.predictions], hypotheses,
                             [p["greedy"] for p in result.predictions] if "greedy" in result.predictions[0] else None)
        for key in ("eval_probe_words", "eval_probe_silence_words", "eval_probe_noise_words"):
            if key in result.metrics:
                again.metrics[key] = result.metrics[key]
        return again

    def _scored(self, texts: List[str]) -> List[str]:
        """The text WER and CER are computed on: as normalized, and through Whisper's English text normalizer too
        with task.whisper_normalizer=true."""
        if not self.cfg.whisper_normalizer:
            return list(texts)
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        spelling = getattr(getattr(self.processor, "tokenizer", None), "english_spelling_normalizer", None) or {}
        normalizer = EnglishTextNormalizer(spelling)
        return [normalizer(t) for t in texts]

    def _result(self, loss, gathered, rows, references, hypotheses, greedy=None) -> EvalResult:
        scored_refs, scored_hyps = self._scored(references), self._scored(hypotheses)
        rates = error_rates(scored_refs, scored_hyps)
        metrics = {"eval_loss": loss, "eval_wer": rates["wer"], "eval_cer": rates["cer"]}
        summary = f"WER {rates['wer']:.4f}  CER {rates['cer']:.4f}"
        if self.cfg.whisper_normalizer:
            summary += " (after Whisper's English text normalizer)"
        predictions = [{"reference": ref, "hypothesis": hyp, "wer": f"{jiwer.wer(sref, shyp):.4f}"}
                       for ref, hyp, sref, shyp in zip(references, hypotheses, scored_refs, scored_hyps)]
        if greedy is not None:
            plain = error_rates(scored_refs, self._scored(greedy))
            metrics.update(eval_wer_greedy=plain["wer"], eval_cer_greedy=plain["cer"])
            summary += f" with the {self.kind.decoder_label} (greedy: WER {plain['wer']:.4f}  CER {plain['cer']:.4f})"
            for p, g in zip(predictions, greedy):
                p["greedy"] = g
        metrics.update(eval_utterances=len(rows), eval_gathered=gathered)
        return EvalResult(metrics=metrics, rank=(rates["wer"], rates["cer"]), objective=rates["wer"],
                          summary=summary, rows=rows, predictions=predictions)

    def _probe(self, model, accelerator, result: EvalResult) -> None:
        """task.hallucination_probe: the model's transcripts of clips with nothing to transcribe; the words it emits
        per clip, in all and by kind of clip, join the evaluation's metrics."""
        from speechkit.data.samplers import eval_loader

        if self._probe_clips is None:  # the same clips at every evaluation: made once
            window = self.family.longest_clip(self.config, self.sampling_rate)
            self._probe_clips = ProbeClips(self.cfg.hallucination_probe, min(PROBE_S, window / self.sampling_rate)
                                           if window else PROBE_S, self.sampling_rate)
        clips = self._probe_clips
        # Not prepared by accelerate (a checkpoint saves the state of every prepared loader): every process reads all
        # the probe's clips, and duplicates gathered from several processes count once (by row).
        from accelerate.utils import send_to_device

        loader = (send_to_device(batch, accelerator.device)
                  for batch in eval_loader(clips, self.collator(), self.cfg.hallucination_probe))
        texts, _, _, _ = self.kind.decode(model, loader, accelerator, keep_logits=False)
        words = {i: len(texts[i].split()) for i in texts}
        for kind in ("silence", "noise"):
            mine = [words[i] for i in words if clips.kinds[i] == kind]
            result.metrics[f"eval_probe_{kind}_words"] = float(np.mean(mine))
        result.metrics["eval_probe_words"] = float(np.mean(list(words.values())))
        result.summary += f"; probe {result.metrics['eval_probe_words']:.2f} words per silent or noise clip"
        self.probe = {"clips": [(clips.kinds[i], texts[i]) for i in sorted(texts)]}

    def after_training(self, model, eval_set, accelerator, run_dir: str, result: EvalResult,
                       batch_size: int) -> EvalResult:
        return self.kind.after_training(model, eval_set, accelerator, run_dir, result, batch_size)

    @property
    def decoder_name(self) -> str:
        return self.kind.decoder_name

    def report_sections(self, result: EvalResult, ids: List[str], durations, audio=None, kept: str = "") -> list:
        """report.html: scores, WER by duration, frequent errors, every utterance aligned with its clip
        (speechkit/report.py), and what the model said on the hallucination probe's clips."""
        from speechkit.report import asr_sections, table

        sections = asr_sections([p["reference"] for p in result.predictions],
                                [p["hypothesis"] for p in result.predictions], durations, ids, self.decoder_name,
                                audio, kept)
        if self.probe is not None:
            m = result.metrics
            sections.append((f"Hallucination probe: {m['eval_probe_words']:.2f} words per clip with nothing to "
                             "transcribe",
                             f"<p>silence {m['eval_probe_silence_words']:.2f}, noise "
                             f"{m['eval_probe_noise_words']:.2f} words per clip (ideally none)</p>"
                             + table(["clip", "what the model said"],
                                     [(kind, text or "(nothing)") for kind, text in self.probe["clips"]])))
        return sections

    def report_clips(self, result: EvalResult) -> List[int]:
        """Every utterance, the highest WER first."""
        return sorted(range(len(result.predictions)), key=lambda k: -float(result.predictions[k]["wer"]))

    def examples(self, result: EvalResult, n: int, width: int = 48) -> str:
        """A few references beside their hypotheses, for the console."""
        def cut(s: str) -> str:
            return s if len(s) <= width else s[: width - 1] + "…"

        lines = [f"{'reference':<{width}} | {'hypothesis':<{width}}", "-" * (2 * width + 3)]
        lines += [f"{cut(p['reference']):<{width}} | {cut(p['hypothesis']):<{width}}" for p in result.predictions[:n]]
        return "\n".join(lines)

    # --------------------------------------------------------------------------------------------- inspection
    def inventory(self, rows) -> Counter:
        """Every character of the normalized transcripts, counted."""
        return Counter("".join(data.texts(rows)))
