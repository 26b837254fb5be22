"""w2v-BERT 2.0 (`facebook/w2v-bert-2.0`, model type wav2vec2-bert): a conformer over 80-bin log-mel filter banks
(25 ms windows every 10 ms, two frames stacked into one of 160 values: 20 ms per input frame), made by
`SeamlessM4TFeatureExtractor`, which normalises each utterance and gives the attention mask the model always takes.
No convolutional feature encoder to freeze. Heads: CTC, sequence classification and frames; an optional adapter
(config.add_adapter) strides the output further, which transformers' own length arithmetic follows."""

from __future__ import annotations

from speechkit.models.base import ModelFamily

MEL_BINS = 80


class W2vBert(ModelFamily):
    name = "w2v-BERT 2.0"
    model_types = ("wav2vec2-bert",)
    heads = ("ctc", "classification", "frames")
    lora_targets = (r".*\.encoder\.layers\.\d+\.(self_attn\.linear_(q|k|v|out)"
                    r"|ffn[12]\.(intermediate_dense|output_dense))")
    # transformers 5.23's attention reshapes its transposed output, which torch.export (torch 2.13) cannot trace
    # with a dynamic length
    onnx_refused = "torch.export cannot trace w2v-BERT's attention with a dynamic length yet"
    processor = "Wav2Vec2BertProcessor"

    def new_feature_extractor(self, config, sampling_rate: int):
        from transformers import SeamlessM4TFeatureExtractor

        return SeamlessM4TFeatureExtractor(feature_size=MEL_BINS, num_mel_bins=MEL_BINS, sampling_rate=sampling_rate,
                                           stride=self._stride(config), return_attention_mask=True)

    @staticmethod
    def _stride(config) -> int:
        return config.feature_projection_input_dim // MEL_BINS  # filter-bank frames stacked into one input frame

    @staticmethod
    def _window_hop(sampling_rate: int):
        return int(0.025 * sampling_rate), int(0.010 * sampling_rate)

    def receptive_field(self, config, sampling_rate: int) -> int:
        """One input frame: `stride` filter-bank frames (560 samples at 16 kHz). A clip of one filter-bank frame
        has no frame its mask keeps, and its normalisation divides by zero."""
        window, hop = self._window_hop(sampling_rate)
        return window + (self._stride(config) - 1) * hop

    def input_lengths(self, config, sampling_rate: int, longest_s: float):
        """Input frames (filter-bank frames stacked `stride` at a time): from two (an axis of one would be fixed by
        the exporter) to `longest_s` seconds' worth."""
        _, hop = self._window_hop(sampling_rate)
        return 2, int(longest_s * sampling_rate) // hop // self._stride(config)

    def output_frames(self, config, samples: int, sampling_rate: int) -> int:
        """Filter-bank frames, stacked `stride` at a time, then the adapter's strided convolutions (padding
        kernel // 2), as the model's own length arithmetic does. An odd last filter-bank frame is stacked with
        padding, outside the mask: transformers' ASR pipeline decodes that frame too (it applies no mask to CTC
        output), speechkit's evaluation and transcribe.py do not."""
        window, hop = self._window_hop(sampling_rate)
        n = (1 + (samples - window) // hop) // self._stride(config) if samples >= window else 0
        return max(int(self._adapted(config, n)), 0)

    def output_lengths(self, config, input_lengths):
        """The attention mask counts input frames (filter-bank frames stacked `stride` at a time, an odd last one
        outside it), not samples: only the adapter's arithmetic is left to do."""
        return self._adapted(config, input_lengths).clamp(min=0)

    @staticmethod
    def _adapted(config, n):
        """Input frames `n` (an int or a tensor) through the adapter's strided convolutions, where it has one."""
        if config.add_adapter:
            kernel, stride = config.adapter_kernel_size, config.adapter_stride
            for _ in range(config.num_adapter_layers):
                n = (n + 2 * (kernel // 2) - kernel) // stride + 1
        return n
