"""Whisper (`openai/whisper-*`, model type whisper): an encoder-decoder transformer over a log-mel filter bank of a
fixed window (`WhisperFeatureExtractor` pads or cuts every clip to it: 30 s for the checkpoints, 10 ms frames, two of
them per encoder position), whose decoder generates tokens after a prompt of special tokens (start of transcript,
language, task, no timestamps). Head: sequence to sequence (`AutoModelForSpeechSeq2Seq`).

A pretrained checkpoint ships its processor (feature extractor and tokenizer) and its generation config. A model
built from scratch gets a window of its own (`max_source_positions` encoder positions of 20 ms) and a tokenizer
built from the training transcripts by the speech-recognition task (speechkit/tasks/asr/seq2seq.py)."""

from __future__ import annotations

from typing import Optional

from speechkit.config import ConfigError
from speechkit.models.base import ModelFamily, ModelInputs

HOP_S = 0.01  # the filter bank's frames; the encoder's second convolution strides 2 of them into one position


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
