"""The Audio Spectrogram Transformer (`MIT/ast-finetuned-audioset-10-10-0.4593`, model type
audio-spectrogram-transformer): a ViT over a log-mel filter bank of a fixed window (`ASTFeatureExtractor` pads or
cuts every clip to `max_length` frames of 10 ms; AudioSet's mean and std). Classification only."""

from __future__ import annotations

from typing import Optional

from speechkit.models.base import ModelFamily


class AudioSpectrogramTransformer(ModelFamily):
    name = "Audio Spectrogram Transformer"
    model_types = ("audio-spectrogram-transformer",)
    heads = ("classification",)

    def new_feature_extractor(self, config, sampling_rate: int):
        """A from-scratch AST's filter bank: the architecture's mel bins and window."""
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor(sampling_rate=sampling_rate, num_mel_bins=config.num_mel_bins,
                                   max_length=config.max_length)

    def uses_attention_mask(self, config) -> bool:
        return False  # one fixed-size window: nothing is padded that a mask would hide

    def input_window(self, feature_extractor) -> Optional[int]:
        """max_length frames of 10 ms."""
        return int(feature_extractor.max_length * feature_extractor.sampling_rate // 100)

    def receptive_field(self, config, sampling_rate: int) -> int:
        return int(0.025 * sampling_rate)  # one 25 ms frame of the filter bank
