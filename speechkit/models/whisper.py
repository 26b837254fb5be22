"""Whisper (`openai/whisper-*`, model type whisper): an encoder-decoder transformer over a log-mel filter bank of a
fixed window (`WhisperFeatureExtractor` pads or cuts every clip to it: 30 s for the checkpoints, 10 ms frames, two of
them per encoder position), whose decoder generates tokens after a prompt of special tokens (start of transcript,
language, task, no timestamps). Head: sequence to sequence (`AutoModelForSpeechSeq2Seq`).

A pretrained checkpoint ships its processor (feature extractor and tokenizer) and its generation config. A model
built from scratch gets a window of its own (`max_source_positions` encoder positions of 20 ms) and a tokenizer
built from the training transcripts (`build_tokenizer`): a byte-level character vocabulary, Whisper's special tokens
(every language token, in Whisper's order, so the stock tokenizer's prompt arithmetic holds) and timestamp tokens up
to its window, saved as the stock WhisperTokenizer does, so the stock processor and pipeline load it. The generation
head kind (speechkit/kinds/generation/) trains and reads it."""

from __future__ import annotations

from typing import List, Optional

from speechkit.config import ConfigError
from speechkit.models.base import ModelFamily, ModelInputs

HOP_S = 0.01  # the filter bank's frames; the encoder's second convolution strides 2 of them into one position
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


class LogMelWindow(ModelInputs):
    """Whisper's input: the log-mel filter bank of each clip zero-padded (or cut) to the window, as
    `WhisperFeatureExtractor` computes it, with the feature extractor's own batched torch code. Computed only as far
    as the batch's audio reaches: past the longest clip by a whole FFT, every frame sees nothing but zeros and comes
    out as the filter bank's floor, so those frames are filled with the value of the last frame computed, which
    sees only zeros too (a batch of 2 s clips in whisper_scratch's 4 s window costs about half the full window's).
    A feature extractor that dithers (adds noise to every sample) computes the whole window, through its __call__."""

    def __call__(self, clips) -> dict:
        import numpy as np
        import torch

        fe = self.feature_extractor
        fbank = getattr(fe, "_torch_extract_fbank_features", None)
        if fbank is None or fe.dither:  # no batched torch filter bank, or noise in the padding too: __call__ as is
            return super().__call__(clips)
        window, hop, n_fft = self.window, fe.hop_length, fe.n_fft
        longest = min(max(len(c) for c in clips), window)
        # samples computed: the longest clip and a whole FFT of zeros after it, in whole frames; the whole window where
        # that leaves too little (the window's own end reflects its last samples into its last frames)
        span = -(-(longest + n_fft) // hop) * hop
        if span + 2 * n_fft > window:
            span = window
        audio = np.zeros((len(clips), span), dtype=np.float32)
        for row, clip in zip(audio, clips):
            row[:min(len(clip), span)] = clip[:span]
        computed = torch.from_numpy(fbank(audio, "cpu"))
        features = computed.new_empty((len(clips), computed.shape[1], window // hop))
        features[..., :computed.shape[-1]] = computed
        features[..., computed.shape[-1]:] = computed[..., -1:]  # frames of zeros only: the floor
        seen = sum(min(len(c), window) for c in clips)
        return {self.name: features, "audio_samples": seen, "padded_samples": window * len(clips)}


class Whisper(ModelFamily):
    name = "Whisper"
    model_types = ("whisper",)
    heads = ("seq2seq",)
    processor = "WhisperProcessor"
    input_class = LogMelWindow
    has_encoder = True
    prompt_language = True
    prompt_tokens = PROMPT
    timestamp_s = TIME_PRECISION
    lora_targets = (r".*\.(encoder|decoder)\.layers\.\d+\."
                    r"((self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)")

    @staticmethod
    def window_s(config) -> float:
        return config.max_source_positions * 2 * HOP_S

    def new_feature_extractor(self, config, sampling_rate: int):
        from transformers import WhisperFeatureExtractor

        window = self.window_s(config)
        if abs(window - round(window)) > 1e-9:
            raise ConfigError(f"model.architecture.max_source_positions={config.max_source_positions}: Whisper's "
                              "feature extractor takes a whole number of seconds (50 positions a second)")
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=sampling_rate,
                                       chunk_length=int(round(window)))

    def uses_attention_mask(self, config) -> bool:
        return False  # every clip is padded to the window, as Whisper was trained

    def input_window(self, feature_extractor) -> Optional[int]:
        return int(feature_extractor.n_samples)

    def longest_clip(self, config, sampling_rate: int) -> Optional[int]:
        """A clip longer than the window would be cut: it cannot be trained on or scored whole."""
        return int(round(self.window_s(config) * sampling_rate))

    def receptive_field(self, config, sampling_rate: int) -> int:
        return int(0.025 * sampling_rate)  # one 25 ms frame of the filter bank; the window pads the rest

    def frame_hop(self, config) -> int:
        raise ConfigError("a Whisper model has no output frames: it generates tokens")

    def freeze_encoder(self, model) -> None:
        model.freeze_encoder()

    def fast_paths(self, model, device) -> list:
        from speechkit.models import fast_paths

        return fast_paths.apply(model, device, time_major=False)

    # ------------------------------------------------------------------------------- generation: its prompt
    def decoder_positions(self, config) -> int:
        return config.max_target_positions

    def new_tokenizer(self, texts: List[str], config):
        return build_tokenizer(texts, self.window_s(config))

    def new_head_config(self, tokenizer) -> dict:
        ids = tokenizer.convert_tokens_to_ids
        end = ids("<|endoftext|>")
        return {"vocab_size": len(tokenizer), "pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
                "decoder_start_token_id": ids("<|startoftranscript|>"), "suppress_tokens": None,
                "begin_suppress_tokens": None}

    def set_prompt(self, tokenizer, language: Optional[str], task: str) -> None:
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)

    def describe_prompt(self, language: Optional[str], task: str, short: bool = False) -> str:
        return f"prompt: {language}, {task}" if short else f"prompt: language {language}, task {task}"

    def generation_config(self, model, tokenizer, language: Optional[str], task: str, pretrained: bool):
        """A checkpoint's own with the language and task to prompt with (no forced ids: generate() builds the prompt
        from them); a from-scratch model's made from its tokenizer."""
        if not pretrained:
            return new_generation_config(tokenizer, language, task, model.config.max_target_positions)
        generation = model.generation_config
        generation.language, generation.task, generation.forced_decoder_ids = language, task, None
        return generation

    def timestamp_begin(self, generation_config) -> Optional[int]:
        """Right after <|notimestamps|>, where the checkpoint predicts timestamps (its generation config has
        Whisper's timestamp settings, as the openai checkpoints do)."""
        if getattr(generation_config, "max_initial_timestamp_index", None) is None \
                or getattr(generation_config, "no_timestamps_token_id", None) is None:
            return None
        return generation_config.no_timestamps_token_id + 1
