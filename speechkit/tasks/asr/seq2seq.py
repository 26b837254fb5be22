"""Speech recognition with a sequence-to-sequence model (Whisper): the decoder generates a transcript's tokens after a
prompt of special tokens (start of transcript, the language of dataset.language, task.whisper_task, no timestamps),
as the Hugging Face "fine-tune Whisper" blog and `run_speech_recognition_seq2seq.py` train it.

- Tokens: a pretrained checkpoint keeps its own tokenizer. A model built from scratch gets one made from the
  training transcripts (`build_tokenizer`): a byte-level character vocabulary, Whisper's special tokens (every
  language token, in Whisper's order, so the stock tokenizer's prompt arithmetic holds) and timestamp tokens up to
  its window, saved as the stock WhisperTokenizer does, so the stock processor and pipeline load it.
- Targets: the prompt, the transcript's tokens and the end of text; a transcript longer than the decoder's
  max_target_positions is dropped and reported (`transcript_too_long`), as a clip longer than the input window is
  (the data's checking pass, `too_long`).
- Scoring: generation (task.decoder.num_beams, task.decoder.max_new_tokens) on the evaluation split; the hypotheses
  are normalized as the references are (dataset.text), and with task.whisper_normalizer=true both also go through
  Whisper's English text normalizer. What ships: WhisperProcessor and the generation config (language, task, beams,
  length), so the stock pipeline generates as speechkit scored."""

from __future__ import annotations

import dataclasses
import functools
import logging
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch

from speechkit import data
from speechkit.config import ConfigError, DecoderType
from speechkit.tasks.asr.ctc import pad_labels
from speechkit.tasks.scoring import gather_predictions

log = logging.getLogger(__name__)

PROMPT = 4  # <|startoftranscript|> <|language|> <|task|> <|notimestamps|>
TIME_PRECISION = 0.02  # seconds per timestamp token


def build_tokenizer(texts: List[str], window_s: float):
    """A Whisper tokenizer for a model trained from scratch: one token per byte-level character of `texts`, then
    Whisper's special tokens in Whisper's own order (the stock tokenizer finds a language token at its offset from
    <|startoftranscript|>, and the timestamps right after the last special token), then a timestamp token every
    20 ms up to `window_s`."""
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    to_unicode = bytes_to_unicode()
    chars = sorted({to_unicode[b] for t in texts for b in t.encode("utf-8")} | {to_unicode[ord(" ")]})
    tokenizer = WhisperTokenizer(vocab={c: i for i, c in enumerate(chars)}, merges=[], unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * TIME_PRECISION:.2f}|>" for i in range(int(round(window_s / TIME_PRECISION)) + 1)])
    return tokenizer


def new_generation_config(tokenizer, language: Optional[str], task: str, max_length: int):
    """What the stock generate() needs of a from-scratch Whisper: its special tokens' ids, the languages and tasks
    of its prompt, the language and task to prompt with."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    end = ids("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"), bos_token_id=end, eos_token_id=end, pad_token_id=end,
        no_timestamps_token_id=ids("<|notimestamps|>"), is_multilingual=True, max_length=max_length,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        language=language, task=task, suppress_tokens=[], begin_suppress_tokens=[])


def attach_ctc_layer(model) -> None:
    """ESPnet's hybrid CTC/attention training (task.whisper_ctc_weight): a linear CTC layer over the encoder's frames,
    trained with the model and kept in its checkpoints, never shipped (save_pretrained leaves it out). Its logits
    are computed inside the model's forward (a forward hook), so that DDP sees the layer used, and only while
    training: generation and the evaluation's loss are the plain model's."""
    model.ctc_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size)
    model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | {"ctc_head.weight", "ctc_head.bias"}
    model.register_forward_hook(_ctc_logits)


def _ctc_logits(model, args, out):
    if model.training and getattr(out, "encoder_last_hidden_state", None) is not None:
        # a type of its own with the extra field, which DDP can rebuild from the output's fields
        return _with_ctc_logits(type(out))(**out, ctc_logits=model.ctc_head(out.encoder_last_hidden_state))
    return out


@functools.lru_cache(maxsize=None)
def _with_ctc_logits(output_type):
    return dataclasses.make_dataclass(f"{output_type.__name__}WithCtcLogits",
                                      [("ctc_logits", Optional[torch.FloatTensor], None)], bases=(output_type,))


class Seq2SeqLabels:
    """A batch's labels: the items' token ids padded with -100 (ignored by the loss), the leading
    <|startoftranscript|> cut (the model puts its decoder start there itself, shifting the labels right)."""

    def __init__(self, decoder_start: int):
        self.decoder_start = decoder_start

    def __call__(self, items: List[dict], batch: dict) -> dict:
        return pad_labels([{"labels": x["labels"][1:] if x["labels"] and x["labels"][0] == self.decoder_start
                            else x["labels"]} for x in items], batch)


class Seq2Seq:
    """The sequence-to-sequence side of speech recognition (speechkit/tasks/asr/task.py delegates to it)."""

    name = "seq2seq"
    card_kind = "A speech recognition (sequence to sequence, Whisper)"

    def __init__(self, task):
        self.task, self.cfg = task, task.cfg
        if self.cfg.decoder.type == DecoderType.kenlm:
            raise ConfigError("task.decoder.type=kenlm: an n-gram LM decodes a CTC model's frames; a Whisper model "
                              "generates its text: use task.decoder.type=greedy (and task.decoder.num_beams)")
        self.processor = None
        self.tokenizer = None
        self.language = self._language(task.dataset_cfg)
        self.whisper_task = getattr(self.cfg.whisper_task, "value", self.cfg.whisper_task)
        self.max_target_positions: Optional[int] = None
        self.num_beams = self.cfg.decoder.num_beams

    @staticmethod
    def _language(dataset) -> Optional[str]:
        if dataset is None:
            return None
        return dataset.language or (dataset.demo.language if getattr(dataset.source, "value", dataset.source) ==
                                    "demo" else None)

    # ---------------------------------------------------------------------------- training: targets and model
    def check_model(self, config) -> None:
        """Before any data: the prompt needs the transcripts' language."""
        self.max_target_positions = config.max_target_positions
        if self.language is None:
            raise ConfigError("dataset.language: Whisper's prompt names the language of the transcripts; set it (an "
                              "ISO 639-1 code, e.g. dataset.language=en)")

    def fit(self, train_rows, eval_rows, splits: Tuple[str, str], report, run_dir: str, is_main: bool):
        """The tokenizer (a pretrained checkpoint's own, else one built from the training transcripts), its prompt
        set; transcripts longer than the decoder takes dropped and reported, in both splits."""
        model_cfg = self.task.model_cfg
        if model_cfg.name_or_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision)
        else:
            from speechkit.models import family_of
            from speechkit.models.base import base_config

            config = base_config(model_cfg)
            self.tokenizer = build_tokenizer(data.texts(train_rows), family_of("whisper").window_s(config))
        self.tokenizer.set_prefix_tokens(language=self.language, task=self.whisper_task, predict_timestamps=False)
        return self._fitting(train_rows, splits[0], report), self._fitting(eval_rows, splits[1], report)

    def _fitting(self, rows, split: str, report):
        """The rows whose transcripts the decoder can take; the others reported."""
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
        return f"{len(self.tokenizer)} tokens (prompt: {self.language}, {self.whisper_task})"

    def head_config(self) -> dict:
        """A from-scratch decoder's vocabulary and special tokens; a pretrained one keeps its own head."""
        if self.task.model_cfg.name_or_path:
            return {}
        ids = self.tokenizer.convert_tokens_to_ids
        end = ids("<|endoftext|>")
        return {"vocab_size": len(self.tokenizer), "pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
                "decoder_start_token_id": ids("<|startoftranscript|>"), "suppress_tokens": None,
                "begin_suppress_tokens": None}

    def prepare(self, model, run_dir: str) -> None:
        """The processor that ships (the family's feature extractor, the tokenizer), and the generation config
        with the prompt's language and task, the beams and the length speechkit scores with."""
        from transformers import WhisperProcessor

        self.processor = WhisperProcessor(feature_extractor=self.task.feature_extractor, tokenizer=self.tokenizer)
        if self.task.model_cfg.name_or_path:
            generation = model.generation_config
            generation.language, generation.task, generation.forced_decoder_ids = self.language, self.whisper_task, \
                None
        else:
            generation = new_generation_config(self.tokenizer, self.language, self.whisper_task,
                                               model.config.max_target_positions)
        generation.num_beams = self.num_beams = self.cfg.decoder.num_beams
        # the decoder's tokens in all, the prompt's included (the Trainer's generation_max_length)
        longest = model.config.max_target_positions
        generation.max_length = min(longest, PROMPT + self.cfg.decoder.max_new_tokens) \
            if self.cfg.decoder.max_new_tokens else longest
        generation.max_new_tokens = None
        model.generation_config = generation
        if self.cfg.whisper_ctc_weight:
            attach_ctc_layer(model)

    # ---------------------------------------------------------------------------------------- a saved model
    def restore(self, model, model_dir: str) -> None:
        from transformers import WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.task.bind(model, self.processor.feature_extractor)
        self.language = getattr(model.generation_config, "language", None) or self.language
        self.whisper_task = getattr(model.generation_config, "task", None) or self.whisper_task
        self.max_target_positions = model.config.max_target_positions
        self.num_beams = model.generation_config.num_beams or 1
        self.tokenizer.set_prefix_tokens(language=self.language, task=self.whisper_task, predict_timestamps=False)

    def check_eval_rows(self, rows, split: str, report):
        return self._fitting(rows, split, report)

    # ------------------------------------------------------------------------------------------ data and scoring
    def targets(self, rows) -> list:
        return [self.tokenizer(t).input_ids for t in data.texts(rows)]

    def target_of(self, text: str) -> Tuple[Optional[List[int]], str, str]:
        """A row's token ids (the prompt, the transcript, the end of text), or why it has none."""
        ids = self.tokenizer(text).input_ids
        if len(ids) - 1 > self.max_target_positions:  # the decoder start is the model's own
            return None, "transcript_too_long", (f"{len(ids) - 1} tokens > the decoder's max_target_positions "
                                                 f"({self.max_target_positions})")
        return ids, "", ""

    def forward(self, model, batch: dict, out):
        """The teacher-forced loss of the decoder (the model's own, from the labels); while training with
        task.whisper_ctc_weight w, (1 - w) x that + w x a CTC loss of the encoder's frames (the training-only CTC
        layer's logits, attach_ctc_layer) against the transcript's text tokens, <|endoftext|> as the blank."""
        weight, logits = self.cfg.whisper_ctc_weight, out.get("ctc_logits")
        if not weight or logits is None or "labels" not in batch or out.get("loss") is None:
            return out
        labels = batch["labels"]
        end = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # Whisper's text tokens are the ids below it
        text = (labels >= 0) & (labels < end)
        targets = labels[text]
        target_lengths = text.sum(-1)
        log_probs = torch.nn.functional.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
        ctc = torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=end,
                                           reduction="mean", zero_infinity=True)
        out["loss"] = (1 - weight) * out["loss"] + weight * ctc
        return out

    def batch_targets(self) -> Seq2SeqLabels:
        return Seq2SeqLabels(self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"))

    def decode(self, model, loader, accelerator, keep_logits: bool = True):
        """({row: hypothesis}, None, mean loss (teacher-forced), predictions gathered): the text each clip's
        generation gives (the model's generation config: its prompt, beams and length), normalized as the
        references are."""
        end = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

        def forward(model, batch):  # the teacher-forced loss, where there are labels (the probe's clips have none)
            return self.task.forward(model, batch) if "labels" in batch else SimpleNamespace(loss=None)

        def generate(out, batch, unwrapped):
            features = batch["input_features"]  # every frame of the window is input (Whisper's encoder takes no mask)
            mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=features.device)
            with accelerator.autocast():
                return unwrapped.generate(input_features=features, attention_mask=mask)

        by_row, loss, gathered = gather_predictions(model, loader, accelerator, forward, generate, end)
        rows = sorted(by_row)
        texts = self.tokenizer.batch_decode([by_row[r].tolist() for r in rows], skip_special_tokens=True)
        normalize = self.task.normalize or str.strip
        return {r: normalize(t) for r, t in zip(rows, texts)}, None, loss, gathered

    @property
    def decoder_label(self) -> Optional[str]:
        return None

    def after_training(self, model, eval_set, accelerator, run_dir: str, result, batch_size: int):
        return result

    @property
    def decoder_name(self) -> str:
        beams = self.num_beams
        return (f"generation ({beams} beam{'s' if beams != 1 else ''}; prompt: language {self.language}, task "
                f"{self.whisper_task})")
