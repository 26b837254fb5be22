"""The generation head kind: an encoder-decoder whose decoder generates the transcript's tokens after its family's
prompt (Whisper: start of transcript, the language of dataset.language, task.whisper_task, no timestamps; Moonshine:
its start token alone), as the Hugging Face "fine-tune Whisper" blog and `run_speech_recognition_seq2seq.py` train it.
What is the family's (speechkit/models/<family>.py) stays there: its prompt, its special tokens, a from-scratch
tokenizer, its generation config; this module asks for them.

- Tokens: a pretrained checkpoint keeps its own tokenizer (task.vocab.source=pretrained, the default where there is
  one). A model built from scratch gets one made by its family from the training transcripts, saved so the stock
  processor and pipeline load it.
- Targets: the prompt, the transcript's tokens and the end of text; the decoder start is the model's own (cut from
  the labels, which the model shifts right). A transcript longer than the decoder's positions is dropped and reported
  (`transcript_too_long`), as a clip longer than the input window is (the data's checking pass, `too_long`).
- Scoring: generation (task.decoder.num_beams, task.decoder.max_new_tokens) on the evaluation split; the hypotheses
  are normalized as the references are (dataset.text). What ships: the family's processor and the generation config
  (prompt, beams, length), so the stock pipeline generates as speechkit scored.
- Hybrid training (task.whisper_ctc_weight, hybrid.py): an auxiliary CTC loss on the encoder's frames.
- Long recordings (Generated): windows of the model's input window at most, each generating its tokens, joined where
  consecutive windows agree over their overlap.
- ONNX (graphs.py): its encoder, its cross-attention's keys and values, and a decoder step over past keys and values.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import List, Optional, Tuple

from speechkit.config import ConfigError, DecoderType, VocabSource
from speechkit.kinds.base import HeadKind, LongForm, pad_labels

log = logging.getLogger(__name__)


class GeneratedLabels:
    """A batch's labels: the items' token ids padded with -100 (ignored by the loss), a leading decoder start cut
    (the model puts its decoder start there itself, shifting the labels right)."""

    def __init__(self, decoder_start: int):
        self.decoder_start = decoder_start

    def __call__(self, items: List[dict], batch: dict) -> dict:
        return pad_labels([{"labels": x["labels"][1:] if x["labels"] and x["labels"][0] == self.decoder_start
                            else x["labels"]} for x in items], batch)


class Generation(HeadKind):
    """The generating side of speech recognition (speechkit/tasks/asr.py composes it)."""

    name = "seq2seq"

    @staticmethod
    def export_graphs(model, example, path, lengths, write, axes) -> str:
        """Its three ONNX graphs (graphs.py)."""
        from speechkit.kinds.generation import graphs

        return graphs.export_graphs(model, example, path, lengths, write, axes)

    def __init__(self, task):
        super().__init__(task)
        self.tokenizer = None
        self.language = self._language(task.dataset_cfg)
        self.whisper_task = getattr(self.cfg.whisper_task, "value", self.cfg.whisper_task)
        self.max_target_positions: Optional[int] = None
        self.num_beams = self.cfg.decoder.num_beams

    @property
    def card_kind(self) -> str:
        return f"A speech recognition (sequence to sequence, {self.task.family.name})"

    @staticmethod
    def _language(dataset) -> Optional[str]:
        if dataset is None:
            return None
        return dataset.language or (dataset.demo.language if getattr(dataset.source, "value", dataset.source) ==
                                    "demo" else None)

    # ------------------------------------------------------------------------------------------------- rules
    @classmethod
    def refusals(cls, get, family):
        if get("task.decoder.type") == DecoderType.kenlm.value:
            yield "task.decoder.type", "kenlm", (f"greedy for a {family.name} model (an n-gram LM decodes a CTC "
                                                 "model's frames; a sequence-to-sequence model generates its text: "
                                                 "task.decoder.num_beams searches more)")
        source, pretrained = get("task.vocab.source"), get("model.name_or_path")
        if source == VocabSource.pretrained.value and not pretrained:
            yield "task.vocab.source", source, ("data or auto for a model built from scratch (model.name_or_path is "
                                                "null: there is no checkpoint's tokenizer to keep)")
        if source == VocabSource.data.value and pretrained:
            yield "task.vocab.source", source, (f"pretrained or auto for a pretrained {family.name} (its decoder "
                                                "generates the checkpoint's own tokens)")
        if family.prompt_language:
            demo = get("dataset.source") == "demo"
            if not get("dataset.language") and not (demo and get("dataset.demo.language")):
                yield "dataset.language", get("dataset.language"), (
                    f"the ISO 639-1 code of the transcripts' language for a {family.name} model, whose prompt names it "
                    "(e.g. dataset.language=en)")
        elif get("task.whisper_task") not in (None, "transcribe"):
            yield "task.whisper_task", get("task.whisper_task"), (f"transcribe for a {family.name} model (its prompt "
                                                                  "has no task to choose)")

    def check_model(self, config, family) -> None:
        super().check_model(config, family)
        self.max_target_positions = family.decoder_positions(config)

    # ---------------------------------------------------------------------------- training: targets and model
    def fit(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The tokenizer (a pretrained checkpoint's own, else one its family builds from the training transcripts),
        its prompt set; transcripts longer than the decoder takes dropped and reported, in both splits."""
        from speechkit import data
        from speechkit.models.base import base_config

        model_cfg, family = self.task.model_cfg, self.task.family
        if model_cfg.name_or_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision)
        else:
            self.tokenizer = family.new_tokenizer(data.texts(train_rows), base_config(model_cfg))
        family.set_prompt(self.tokenizer, self.language, self.whisper_task)
        return self._fitting(train_rows, splits[0], report), self._fitting(eval_rows, splits[1], report)

    def _fitting(self, rows, split: str, report):
        """The rows whose transcripts the decoder can take; the others reported."""
        from speechkit import data
        from speechkit.data.audio import audio_ref

        keep, files = [], None
        for i, text in enumerate(data.texts(rows)):
            _, reason, detail = self.target_of(text)
            if reason:
                files = files or rows.select_columns([data.AUDIO])
                report.add(split, i, audio_ref(files[i][data.AUDIO]), reason, detail)
            else:
                keep.append(i)
        if len(keep) < len(rows):
            log.warning("split '%s': %d transcript(s) longer than the decoder's %d positions left out "
                        "(drop_report.jsonl)", split, len(rows) - len(keep), self.max_target_positions)
        if not keep:
            raise ConfigError(f"split '{split}': every transcript is longer than the decoder's "
                              f"{self.max_target_positions} positions ({report.summary()})")
        return rows if len(keep) == len(rows) else rows.select(keep)

    def describe(self) -> str:
        prompt = self.task.family.describe_prompt(self.language, self.whisper_task, short=True)
        return f"{len(self.tokenizer)} tokens ({prompt})"

    def head_config(self) -> dict:
        """A from-scratch decoder's vocabulary and special tokens (its family's); a pretrained one keeps its own,
        with what its family adds for training."""
        if self.task.model_cfg.name_or_path:
            return self.task.family.kept_head_config(self.task.model_config(self.task.model_cfg)[0])
        return self.task.family.new_head_config(self.tokenizer)

    def prepare(self, model, run_dir: str) -> None:
        """The processor that ships (the family's feature extractor, the tokenizer), and the generation config
        with the family's prompt, the beams and the length speechkit scores with."""
        from speechkit.kinds.generation.hybrid import attach_ctc_layer

        family = self.task.family
        self.processor = family.make_processor(self.tokenizer, self.task.feature_extractor)
        generation = family.generation_config(model, self.tokenizer, self.language, self.whisper_task,
                                              pretrained=bool(self.task.model_cfg.name_or_path))
        generation.num_beams = self.num_beams = self.cfg.decoder.num_beams
        # the decoder's tokens in all, the prompt's included (the Trainer's generation_max_length)
        longest = family.decoder_positions(model.config)
        generation.max_length = min(longest, family.prompt_tokens + self.cfg.decoder.max_new_tokens) \
            if self.cfg.decoder.max_new_tokens else longest
        generation.max_new_tokens = None
        model.generation_config = generation
        if self.cfg.whisper_ctc_weight:
            attach_ctc_layer(model)

    # ---------------------------------------------------------------------------------------- a saved model
    def restore(self, model, model_dir: str) -> None:
        family = self.task.family
        self.processor = family.load_processor(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.task.bind(model, self.processor.feature_extractor)
        self.language = getattr(model.generation_config, "language", None) or self.language
        self.whisper_task = getattr(model.generation_config, "task", None) or self.whisper_task
        self.max_target_positions = family.decoder_positions(model.config)
        self.num_beams = model.generation_config.num_beams or 1
        family.set_prompt(self.tokenizer, self.language, self.whisper_task)

    def check_eval_rows(self, rows, split: str, report):
        return self._fitting(rows, split, report)

    # ------------------------------------------------------------------------------------------ data and scoring
    def _ids(self, text: str) -> List[int]:
        """The prompt, the transcript's tokens and the end of text (added where the tokenizer does not end with
        it)."""
        ids = self.tokenizer(text).input_ids
        end = self.tokenizer.eos_token_id
        return ids if ids and ids[-1] == end else [*ids, end]

    def targets(self, rows) -> list:
        from speechkit import data

        return [self._ids(t) for t in data.texts(rows)]

    def target_of(self, text: str) -> Tuple[Optional[List[int]], str, str]:
        """A row's token ids (the prompt, the transcript, the end of text), or why it has none."""
        ids = self._ids(text)
        if len(ids) - 1 > self.max_target_positions:  # the decoder start is the model's own
            return None, "transcript_too_long", (f"{len(ids) - 1} tokens > the decoder's max_target_positions "
                                                 f"({self.max_target_positions})")
        return ids, "", ""

    def forward(self, model, batch: dict, out):
        """The teacher-forced loss of the decoder (the model's own, from the labels); with task.whisper_ctc_weight,
        the hybrid loss (hybrid.py)."""
        from speechkit.kinds.generation.hybrid import hybrid_loss

        weight, logits = self.cfg.whisper_ctc_weight, out.get("ctc_logits")
        if not weight or logits is None or "labels" not in batch or out.get("loss") is None:
            return out
        out["loss"] = hybrid_loss(out["loss"], logits, batch["labels"], weight, self.tokenizer)
        return out

    def batch_targets(self) -> GeneratedLabels:
        return GeneratedLabels(self.task.config.decoder_start_token_id)

    def generate(self, model, batch: dict, accelerator, **options):
        """The model's generation for a batch of its inputs: every input the model takes, and an attention mask
        of the whole input where the family feeds none (Whisper's window)."""
        import torch

        inputs = self.task.inputs.model_inputs(batch)
        if "attention_mask" not in inputs:
            main = inputs[self.task.inputs.name]
            inputs["attention_mask"] = torch.ones(main.shape[0], main.shape[-1], dtype=torch.long, device=main.device)
        with accelerator.autocast():
            return model.generate(**inputs, **options)

    def decode(self, model, loader, accelerator, keep_logits: bool = True):
        """({row: hypothesis}, None, mean loss (teacher-forced), predictions gathered): the text each clip's
        generation gives (the model's generation config: its prompt, beams and length), normalized as the
        references are."""
        from speechkit.tasks.scoring import gather_predictions

        end = self.tokenizer.eos_token_id

        def forward(model, batch):  # the teacher-forced loss, where there are labels (the probe's clips have none)
            return self.task.forward(model, batch) if "labels" in batch else SimpleNamespace(loss=None)

        def generate(out, batch, unwrapped):
            return self.generate(unwrapped, batch, accelerator)

        by_row, loss, gathered = gather_predictions(model, loader, accelerator, forward, generate, end)
        rows = sorted(by_row)
        texts = self.tokenizer.batch_decode([by_row[r].tolist() for r in rows], skip_special_tokens=True)
        normalize = self.task.normalize or str.strip
        return {r: normalize(t) for r, t in zip(rows, texts)}, None, loss, gathered

    @property
    def decoder_name(self) -> str:
        beams = self.num_beams
        return (f"generation ({beams} beam{'s' if beams != 1 else ''}; "
                f"{self.task.family.describe_prompt(self.language, self.whisper_task)})")

    # -------------------------------------------------------------------------------------------- long form
    def long_form(self, runner) -> "Generated":
        return Generated(runner)


class Generated(LongForm):
    """A generating model's windows: each window, its context included, generates a token sequence; consecutive
    sequences are joined where they agree over their overlap (`join_overlapping`, as the stock pipeline joins
    chunks), so a word spoken across a window's edge is kept once. Segments: where the family predicts timestamps
    and the checkpoint's generation config asks for them (Whisper's openai checkpoints), its timestamp tokens time
    them; else each window's part of the text is a segment timed by the window's new part. A segment's words are
    spread over it in proportion to their length. Windows are the model's own input window at most."""

    def __init__(self, runner):
        super().__init__(runner)
        task = runner.task
        tokenizer = task.processor.tokenizer
        self.tokenizer, self.special = tokenizer, set(tokenizer.all_special_ids)
        self.timestamp_begin = task.family.timestamp_begin(runner.model.generation_config)
        self.timestamp_s = task.family.timestamp_s
        self.decoder = task.kind.decoder_name + (
            f"; segments timed by {task.family.name}'s timestamp tokens" if self.timestamp_begin is not None else "")

    def window(self, chunk_s: float, stride_s: float):
        task = self.t.task
        window = task.family.input_window(task.feature_extractor)
        if not window:
            return chunk_s, stride_s
        window_s = window / self.t.rate
        chunk = min(chunk_s, window_s)
        stride = min(stride_s, chunk / 6)
        if (chunk, stride) != (chunk_s, stride_s):
            log.info("Windows of %g s with %g s of context on each side: the model's input window is %g s", chunk,
                     stride, window_s)
        return chunk, stride

    def read(self, batch: List[tuple]) -> list:
        """Per window (new start, new end, window start, samples): its new part's bounds and its generated text
        tokens, each with the (start, end) in seconds of the segment it belongs to."""
        import torch

        t = self.t
        features = {k: v.to(t.accelerator.device) if torch.is_tensor(v) else v
                    for k, v in t.task.inputs([w[3] for w in batch]).items()}
        options = {"return_timestamps": True} if self.timestamp_begin is not None else {}
        with torch.no_grad():
            generated = t.task.kind.generate(t.model, features, t.accelerator, **options)
        sequences = generated.cpu().tolist() if torch.is_tensor(generated) else generated["sequences"].cpu().tolist()
        return [(start, end, self._timed([i for i in ids if i not in self.special], left, start, end))
                for (start, end, left, _), ids in zip(batch, sequences)]

    def _timed(self, ids: List[int], left: float, start: float, end: float) -> List[Tuple[int, float, float]]:
        """Text tokens with their segment's (start, end): from the timestamp tokens (relative to the window's start
        `left`) where there are any, else the window's new part."""
        if self.timestamp_begin is None:
            return [(i, start, end) for i in ids]
        out, pending, opened = [], [], left  # opened: where the segment being read began
        for i in ids:
            if i < self.timestamp_begin:
                pending.append(i)
                continue
            at = left + (i - self.timestamp_begin) * self.timestamp_s
            if pending:  # a segment's closing timestamp; the next one starts there unless it says otherwise
                out += [(token, opened, max(at, opened)) for token in pending]
                pending = []
            opened = at
        if pending:  # the last segment ran to the window's end
            out += [(token, opened, max(end, opened)) for token in pending]
        return out

    def join(self, parts: list, packed: Optional[list] = None) -> dict:
        """Windows joined where they overlap; packed speech regions (`packed`: each part's window) one after the
        other, their times mapped back to the recording."""
        sequences = [[token for token, _, _ in timed] for _, _, timed in parts]
        merged = join_overlapping(sequences) if packed is None else [
            (token, k, j) for k, sequence in enumerate(sequences) for j, token in enumerate(sequence)]
        groups: List[Tuple[Tuple[float, float], List[int]]] = []
        for token, window, position in merged:
            _, seg_start, seg_end = parts[window][2][position]
            if packed is not None:
                seg_start = packed[window].to_recording(seg_start)
                seg_end = packed[window].to_recording(seg_end, closing=True)
            if groups and groups[-1][0] == (seg_start, seg_end):
                groups[-1][1].append(token)
            else:
                groups.append(((seg_start, seg_end), [token]))
        segments, words, last = [], [], 0.0
        for (start, end), tokens in groups:
            text = self.tokenizer.decode(tokens).strip()
            if not text:
                continue
            start = max(start, last)  # a segment seen from a later window's context starts after the one before
            end = max(end, start)
            last = end
            segments.append({"start": round(start, 3), "end": round(end, 3), "text": text})
            spread = [len(w) + 1 for w in text.split()]
            at = start
            for word, share in zip(text.split(), spread):
                length = (end - start) * share / sum(spread)
                words.append({"word": word, "start": round(at, 3), "end": round(at + length, 3)})
                at += length
        return {"text": " ".join(s["text"] for s in segments), "words": words, "segments": segments}


def join_overlapping(sequences: List[List[int]]) -> List[Tuple[int, int, int]]:
    """Token sequences of consecutive overlapping windows joined into one, each token with the window it comes
    from and its position there: where the end of what is joined so far best agrees with the start of the next
    sequence (the most tokens in place, at least two, longer agreements preferred), the next one's tokens after
    that agreement are added."""
    merged = [(token, 0, j) for j, token in enumerate(sequences[0])] if sequences else []
    for k, sequence in enumerate(sequences[1:], 1):
        cut, best = 0, 0.0
        for i in range(1, min(len(merged), len(sequence)) + 1):
            matches = sum(a[0] == b for a, b in zip(merged[-i:], sequence[:i]))
            score = matches / i + i / 10000
            if matches > 1 and score > best:
                cut, best = i, score
        merged += [(token, k, j) for j, token in enumerate(sequence[cut:], cut)]
    return merged
