"""wav2vec2-like encoders: a convolutional feature encoder over the raw waveform (20 ms frames at 16 kHz), then a
transformer. wav2vec2 itself (wav2vec2-base, XLSR-53, MMS), HuBERT and WavLM share that front end, its lengths, its
feature extractor (`Wav2Vec2FeatureExtractor`: per-utterance normalisation) and its processor; they differ inside the
transformer, which transformers builds from the checkpoint's own config. Heads: CTC, sequence classification (mean
pooling) and frames, where transformers has them for the model type (HuBERT has no frame head)."""

from __future__ import annotations

from speechkit.models.base import ModelFamily


class Wav2Vec2Like(ModelFamily):
    name = "wav2vec2-like (wav2vec2, XLSR, MMS, HuBERT, WavLM)"
    model_types = ("wav2vec2", "hubert", "wavlm")
    heads = ("ctc", "classification", "frames")
    processor = "Wav2Vec2Processor"
    has_feature_encoder = True
    lora_targets = (r".*\.encoder\.layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|out_proj)"
                    r"|feed_forward\.(intermediate_dense|output_dense))")
    language_adapter_types = ("wav2vec2",)  # transformers' adapter_attn_dim layers (HuBERT and WavLM have none)

    def new_feature_extractor(self, config, sampling_rate: int):
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sampling_rate, padding_value=0.0,
                                        do_normalize=True, return_attention_mask=self.uses_attention_mask(config))

    def uses_attention_mask(self, config) -> bool:
        """Layer-norm feature encoders (XLSR, the large models) take an attention mask; group-norm ones (base) were
        trained on plain zero padding and must not."""
        return getattr(config, "feat_extract_norm", None) == "layer"

    def receptive_field(self, config, sampling_rate: int) -> int:
        """The receptive field of the convolutions (400 samples for the released ones)."""
        field, hop = config.conv_kernel[0], config.conv_stride[0]
        for kernel, stride in zip(config.conv_kernel[1:], config.conv_stride[1:]):
            field, hop = field + (kernel - 1) * hop, hop * stride
        return field

    def output_frames(self, config, samples: int, sampling_rate: int) -> int:
        return max(int(self._frames(config, samples)), 0)

    def output_lengths(self, config, input_lengths):
        """The attention mask counts samples: the convolutions' (and the adapter's) arithmetic on each."""
        return self._frames(config, input_lengths).clamp(min=0)

    @staticmethod
    def _frames(config, n):
        """Frames of `n` samples (an int or a tensor): the feature encoder's convolutions, then, with add_adapter
        (wav2vec2, WavLM), the adapter's strided ones of kernel 1, as the model's own _get_feat_extract_output_lengths
        counts them."""
        for kernel, stride in zip(config.conv_kernel, config.conv_stride):
            n = (n - kernel) // stride + 1
        if getattr(config, "add_adapter", False):
            for _ in range(config.num_adapter_layers):
                n = (n - 1) // config.adapter_stride + 1
        return n

    def fast_paths(self, model, device) -> list:
        """The time-major conv feature encoder (wav2vec2's layer-norm stacks: the tiny model, XLSR-53, MMS) and, on
        the CPU, 16-bit dropout masks. HuBERT's and WavLM's own conv layer classes are left stock: the benchmark
        measured the time-major encoder on wav2vec2's (docs/speed.md)."""
        from speechkit.models import fast_paths

        return fast_paths.apply(model, device, time_major=True)
