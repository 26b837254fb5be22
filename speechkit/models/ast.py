"""The Audio Spectrogram Transformer (`MIT/ast-finetuned-audioset-10-10-0.4593`, model type
audio-spectrogram-transformer): a ViT over a log-mel filter bank of a fixed window (`ASTFeatureExtractor` pads or
cuts every clip to `max_length` frames of 10 ms; AudioSet's mean and std). Classification only."""

from __future__ import annotations

from typing import List, Optional

from speechkit.models.base import ModelFamily, ModelInputs

class MaskedFilterBank(ModelInputs):
    """AST's input with SpecAugment in training: `time_masks` spans of up to `time_length` frames and
    `feature_masks` bands of up to `feature_length` mel bins set to 0 (the normalized filter bank's mean)."""

    def __init__(self, feature_extractor, window: int, spec):
        super().__init__(feature_extractor, False, window)
        self.spec = spec

    def mask(self, batch: dict, draws: List[tuple]) -> None:
        from speechkit.data.augment import SPECAUGMENT, draws as stream

        features = batch[self.name]  # (clips, frames, bins)
        frames, bins = features.shape[1], features.shape[2]
        longest_t = self.spec.time_length or frames // 5
        longest_f = self.spec.feature_length or bins * 3 // 8
        for b, draw in enumerate(draws):
            rng = stream(*draw, SPECAUGMENT)
            for _ in range(self.spec.time_masks):
                width = int(rng.integers(0, min(longest_t, frames) + 1))
                start = int(rng.integers(0, frames - width + 1))
                features[b, start:start + width, :] = 0
            for _ in range(self.spec.feature_masks):
                width = int(rng.integers(0, min(longest_f, bins) + 1))
                start = int(rng.integers(0, bins - width + 1))
                features[b, :, start:start + width] = 0


class AudioSpectrogramTransformer(ModelFamily):
    name = "Audio Spectrogram Transformer"
    model_types = ("audio-spectrogram-transformer",)
    heads = ("classification",)
    lora_targets = r".*\.layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(fc1|fc2))"

    def new_feature_extractor(self, config, sampling_rate: int):
        """A from-scratch AST's filter bank: the architecture's mel bins and window."""
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor(sampling_rate=sampling_rate, num_mel_bins=config.num_mel_bins,
                                   max_length=config.max_length)

    def uses_attention_mask(self, config) -> bool:
        return False  # one fixed-size window: nothing is padded that a mask would hide

    def spec_augment(self, config, spec) -> dict:
        return {}  # AST has no masking of its own: its filter bank is masked as it is fed (MaskedFilterBank)

    def inputs(self, config, feature_extractor, specaugment=None) -> ModelInputs:
        if specaugment is not None and specaugment.enabled:
            return MaskedFilterBank(feature_extractor, self.input_window(feature_extractor), specaugment)
        return super().inputs(config, feature_extractor)

    def input_window(self, feature_extractor) -> Optional[int]:
        """max_length frames of 10 ms: every clip is cut or padded to it (the one place the window is said: the
        model's input, the classification task's crop and every task's padded_to read it here)."""
        return int(feature_extractor.max_length * feature_extractor.sampling_rate // 100)

    def receptive_field(self, config, sampling_rate: int) -> int:
        return int(0.025 * sampling_rate)  # one 25 ms frame of the filter bank
