"""Moonshine (`UsefulSensors/moonshine-tiny`, `-base`; model type moonshine): an encoder-decoder over the raw 16 kHz
waveform of any length (three strided convolutions, 384 samples per encoder frame, then rotary transformer layers),
whose decoder generates tokens after its start token alone: no language or task prompt. Head: sequence to sequence
(`AutoModelForSpeechSeq2Seq`, `MoonshineForConditionalGeneration`); the generation head kind
(speechkit/kinds/generation/) trains and reads it.

A pretrained checkpoint ships its tokenizer (a Llama-style BPE `tokenizer.json`), its feature extractor
(`Wav2Vec2FeatureExtractor`, no normalization) and its generation config; the stock processor is `Wav2Vec2Processor`
(transformers has no Moonshine one). A model built from scratch gets a character tokenizer made from the training
transcripts (`build_tokenizer`: one token per character, <pad> <s> </s> <unk> first), saved as a plain
`tokenizer.json` that AutoTokenizer, the processor and the stock pipeline load.

transformers' own quirks, handled here: a checkpoint without a padding id (moonshine-base) gets its end of text as
one (the model shifts the labels right with it); `MoonshineModel.freeze_encoder` fails (its encoder has no
`_freeze_parameters`), so the encoder's parameters are frozen directly; the model has no SpecAugment settings, so
augment.specaugment is refused for it (the base's check)."""

from __future__ import annotations

from typing import List

from speechkit.models.base import ModelFamily

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3: padding, start (the decoder's), end of text, unknown
CONVOLUTIONS = ((127, 64), (7, 3), (3, 2))  # the encoder's front end: (kernel, stride) of its three convolutions


def frames(samples):
    """The encoder's frames of `samples` (a number, or a traced size): its convolutions' arithmetic."""
    for kernel, stride in CONVOLUTIONS:
        samples = (samples - kernel) // stride + 1
    return samples


def build_tokenizer(texts: List[str]):
    """A character tokenizer for a Moonshine built from scratch: the special tokens, then every character of `texts`
    (the space among them) as a token of its own, decoded by concatenation."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in texts for c in t} | {" "})
    vocab = {token: i for i, token in enumerate([*SPECIALS, *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token a character
    backend.decoder = decoders.Fuse()  # concatenated (tokenizers would join decoded tokens with spaces)
    backend.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


class Moonshine(ModelFamily):
    name = "Moonshine"
    model_types = ("moonshine",)
    heads = ("seq2seq",)
    processor = "Wav2Vec2Processor"  # what AutoProcessor gives for a Moonshine folder
    has_encoder = True
    lora_targets = (r".*\.(encoder|decoder)\.layers\.\d+\."
                    r"((self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|o_proj)|mlp\.fc1|mlp\.fc2)")

    def new_feature_extractor(self, config, sampling_rate: int):
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sampling_rate, padding_value=0.0,
                                        do_normalize=False, return_attention_mask=True)

    def receptive_field(self, config, sampling_rate: int) -> int:
        """The shortest clip its three convolutions take (895 samples)."""
        field, hop = CONVOLUTIONS[0]
        for kernel, stride in CONVOLUTIONS[1:]:
            field, hop = field + (kernel - 1) * hop, hop * stride
        return field

    def output_frames(self, config, samples: int, sampling_rate: int) -> int:
        """The encoder's frames of a clip."""
        return max(int(frames(samples)), 0)

    def frame_hop(self, config) -> int:
        from speechkit.config import ConfigError

        raise ConfigError("a Moonshine model has no output frames: it generates tokens")

    def freeze_encoder(self, model) -> None:
        for parameter in model.get_encoder().parameters():
            parameter.requires_grad = False

    def exportable(self, model):
        """The encoder's frame count in integer arithmetic while the model is traced: transformers computes it with
        int(float), which the exporter cannot trace over a dynamic length."""
        import contextlib

        encoder = model.get_encoder()

        @contextlib.contextmanager
        def traced():
            encoder._get_feat_extract_output_lengths = frames
            try:
                yield
            finally:
                del encoder._get_feat_extract_output_lengths

        return traced()

    # ------------------------------------------------------------------------------------ generation
    def new_tokenizer(self, texts: List[str], config):
        return build_tokenizer(texts)

    def kept_head_config(self, config) -> dict:
        """A padding id, which the model needs to shift the labels right (moonshine-base has none): its end of
        text, as moonshine-tiny's config says."""
        return {"pad_token_id": config.eos_token_id} if config.pad_token_id is None else {}
