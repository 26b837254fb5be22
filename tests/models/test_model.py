"""Model building: a pretrained checkpoint (here a local one) gets a fresh CTC head and the recipe's knobs."""

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from conftest import TINY, compose
from speechkit.config import ConfigError
from speechkit.models import build_model, family_of
from speechkit.rundir import RunDir
from speechkit.tasks import make_task
from speechkit.kinds.ctc.vocab import write_vocab

SMALL_ARCH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A randomly initialised wav2vec2 encoder saved as a Hub checkpoint is laid out (no CTC head)."""
    path = tmp_path_factory.mktemp("w2v2_pretrained")
    Wav2Vec2Model(Wav2Vec2Config(**SMALL_ARCH, feat_extract_norm="group")).save_pretrained(path)
    return path


def uses_attention_mask(model) -> bool:
    return family_of(model.config.model_type).uses_attention_mask(model.config)


def test_local_pretrained_checkpoint_gets_new_head_and_knobs(pretrained_dir, tmp_path):
    """Built by the speech-recognition task as training builds it: the head sized to the vocab, the task's CTC
    settings and the recipe's knobs in the model's config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose("train", ["model=xlsr_53", f"model.name_or_path={pretrained_dir}",
                                                f"run_dir={tmp_path}"]))
    task = make_task(cfg)
    task.model_config(cfg.model)  # the head decides the kind of speech recognition: CTC here
    task.kind.vocab = {**{chr(0x3b1 + i): i for i in range(29)}, "|": 29, "[PAD]": 30}
    write_vocab(task.kind.vocab, RunDir(str(tmp_path)).vocab)
    model = task.build_model(cfg.model, str(tmp_path))
    assert model.lm_head.out_features == 31 and model.config.pad_token_id == 30
    assert model.config.layerdrop == 0.1 and model.config.mask_time_prob == 0.05
    assert model.config.attention_dropout == 0.1 and model.config.ctc_loss_reduction == "mean"
    assert model.config.ctc_zero_infinity is True
    assert model.is_activation_checkpointing
    frozen = [p.requires_grad for p in model.wav2vec2.feature_extractor.parameters()]
    assert frozen and not any(frozen)
    assert all(p.requires_grad for p in model.wav2vec2.encoder.parameters())
    encoder = Wav2Vec2Model.from_pretrained(pretrained_dir)
    assert (model.wav2vec2.encoder.layers[0].attention.q_proj.weight == encoder.encoder.layers[0].attention.q_proj.weight).all()
    assert not uses_attention_mask(model)  # group-norm encoder, like wav2vec2-base


def test_knobs_a_recipe_leaves_null_keep_the_checkpoints_values(tmp_path):
    """experiment=aws_superb sets no dropout, layerdrop or masking: the checkpoint's own values stay, as they did in
    the recipe's own code; the knobs it does set (rocm_fleurs_es: feat_proj_dropout 0.0) win over the checkpoint."""
    own = dict(attention_dropout=0.11, hidden_dropout=0.12, activation_dropout=0.13, feat_proj_dropout=0.14,
               final_dropout=0.15, mask_time_prob=0.16, layerdrop=0.17)
    Wav2Vec2Model(Wav2Vec2Config(**SMALL_ARCH, **own)).save_pretrained(tmp_path)
    aws = compose("train", ["experiment=aws_superb", f"model.name_or_path={tmp_path}", "run_dir=/x"]).model
    config = build_model(aws, "ctc", vocab_size=12, pad_token_id=11).config
    assert {k: getattr(config, k) for k in own} == own
    rocm = compose("train", ["experiment=rocm_fleurs_es", f"model.name_or_path={tmp_path}", "run_dir=/x"]).model
    config = build_model(rocm, "ctc", vocab_size=12, pad_token_id=11).config
    assert config.activation_dropout == 0.13  # left to the checkpoint
    assert (config.feat_proj_dropout, config.attention_dropout, config.layerdrop) == (0.0, 0.1, 0.1)


def test_tiny_from_scratch_trains_its_feature_encoder():
    cfg = compose("train", ["model=tiny", *TINY, "run_dir=/x"]).model
    model = build_model(cfg, "ctc", vocab_size=10, pad_token_id=9)
    assert all(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())
    assert model.config.hidden_size == 32 and uses_attention_mask(model)


def test_unknown_architecture_field_is_named():
    cfg = compose("train", ["model=tiny", "+model.architecture.hiden_size=8", "run_dir=/x"]).model
    with pytest.raises(ConfigError, match="hiden_size"):
        build_model(cfg, "ctc", vocab_size=10, pad_token_id=9)


def test_architecture_fields_that_do_not_fit_together_are_refused_in_one_line():
    """XLSR's seven convolutions given four widths: transformers' validation error becomes one line naming the key."""
    cfg = compose("train", ["model=xlsr_53", "model.name_or_path=null", "model.architecture.conv_dim=[16,16,32,32]",
                            "run_dir=/x"]).model
    with pytest.raises(ConfigError, match=r"^model.architecture: not a valid Wav2Vec2Config \(Configuration for "
                                          r"convolutional layers is incorrect.*len\(config.conv_dim\) = 4"):
        build_model(cfg, "ctc", vocab_size=10, pad_token_id=9)


def test_wav2vec2_models_take_a_classification_head(pretrained_dir):
    """`model=wav2vec2_base task=audio_classification`: the pretrained encoder, a fresh sequence-classification head
    with the labels in its config, the feature encoder frozen as the model config says."""
    from transformers import Wav2Vec2ForSequenceClassification

    cfg = compose("train", ["model=wav2vec2_base", "task=audio_classification",
                            f"model.name_or_path={pretrained_dir}", "run_dir=/x"]).model
    model = build_model(cfg, "classification", num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                        label2id={"a": 0, "b": 1, "c": 2}, problem_type="single_label_classification")
    assert isinstance(model, Wav2Vec2ForSequenceClassification) and model.classifier.out_features == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert not any(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())
    encoder = Wav2Vec2Model.from_pretrained(pretrained_dir)
    assert torch.equal(model.wav2vec2.encoder.layers[0].attention.q_proj.weight,
                       encoder.encoder.layers[0].attention.q_proj.weight)


def test_a_model_without_a_ctc_head_is_refused_for_speech_recognition():
    cfg = compose("train", ["model=ast_tiny", "task=audio_classification", "run_dir=/x"]).model
    with pytest.raises(ConfigError, match="no CTC head"):
        build_model(cfg, "ctc", vocab_size=10, pad_token_id=9)


def test_the_handler_serves_each_trainable_head_as_its_task_says():
    """The SageMaker handler (shipped alone in model.tar.gz) serves the heads of speechkit/inference/heads.py that
    name a pipeline, which the model families read too: each served head's pipeline is its task's, its Auto class
    the family's."""
    from speechkit.models.base import HEADS
    from conftest import shipped_handler
    from speechkit.tasks import TASKS, task_class
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    trained = {(task_class(name).pipeline, *HEADS[head]) for name, entry in TASKS.items() for head in entry.heads}
    assert set(inference.SERVED) <= trained  # each served head as the task and the family say it
    served = {head for name, entry in TASKS.items() for head in entry.heads
              if (task_class(name).pipeline, *HEADS[head]) in set(inference.SERVED)}
    assert served == {"ctc", "seq2seq", "classification"}  # a diarizer is not served by the handler


def test_a_family_is_found_by_model_type_and_an_unknown_one_is_named():
    from speechkit.config import ConfigError
    from speechkit.models import family_of

    assert family_of("hubert").name == family_of("wav2vec2").name and "w2v-BERT" in family_of("wav2vec2-bert").name
    assert family_of("whisper").heads == ("seq2seq",)
    with pytest.raises(ConfigError, match="no family for model type 'speecht5'"):
        family_of("speecht5")


@pytest.mark.parametrize("window_s,seconds", [
    (4, [2.0, 1.7, 2.3, 0.4]),  # the demo's: half the window is padding
    (4, [3.9, 4.0, 3.95]),  # the window full: computed whole
    (4, [1.0, 6.5]),  # a clip longer than the window is cut
    (4, [0.01]),  # one clip shorter than a frame
    (30, [3.2, 9.8, 12.0]),  # a checkpoint's 30 s window
])
def test_whisper_input_is_the_feature_extractors_filter_bank(window_s, seconds):
    """The Whisper family's input computes the filter bank only as far as the batch's audio reaches and fills the
    rest with the floor: the features, and the audio counted, are those WhisperFeatureExtractor gives the window (to
    float32's last bit: an FFT over fewer frames may round one differently)."""
    import numpy as np
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from speechkit.models.base import ModelInputs

    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=window_s)
    family = family_of("whisper")
    inputs = family.inputs(WhisperConfig(max_source_positions=window_s * 50), fe)
    rng = np.random.default_rng(len(seconds))
    t = np.arange(int(16000 * max(seconds))) / 16000
    clips = [(0.3 * np.sin(2 * np.pi * 220 * t[:int(16000 * s)]) + 0.05 * rng.standard_normal(int(16000 * s)))
             .astype(np.float32) for s in seconds]
    ours, stock = inputs(clips), ModelInputs(fe, False, family.input_window(fe))(clips)
    assert type(inputs).__name__ == "LogMelWindow"
    assert ours["input_features"].shape == stock["input_features"].shape == (len(clips), 80, window_s * 100)
    torch.testing.assert_close(ours["input_features"], stock["input_features"], rtol=0, atol=2.5e-7)
    assert (ours["audio_samples"], ours["padded_samples"]) == (stock["audio_samples"], stock["padded_samples"])


def test_a_dithering_whisper_feature_extractor_is_computed_over_the_whole_window():
    """Dither adds noise to the padding too, so nothing there is the floor: the whole window, as the stock call."""
    import numpy as np
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from speechkit.models.base import ModelInputs

    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=4, dither=1e-4)
    clips = [np.full(16000, 0.1, dtype=np.float32)]
    torch.manual_seed(0)
    ours = family_of("whisper").inputs(WhisperConfig(max_source_positions=200), fe)(clips)["input_features"]
    torch.manual_seed(0)
    stock = ModelInputs(fe, False, 64000)(clips)["input_features"]
    assert torch.equal(ours, stock)
    assert ours[0, :, -1].std() > 0  # the padding's frames carry the noise


def test_a_ctc_checkpoint_keeps_its_own_tokenizer_and_head_with_vocab_source_pretrained(tmp_path):
    """task.vocab.source=pretrained on a fine-tuned CTC checkpoint (its processor beside it, as on the Hub): the
    checkpoint's tokenizer is kept (vocab.json is its vocab), its head too (the same weights, its size), and a
    transcript with a character it lacks is dropped and named; without a checkpoint it is refused in one line."""
    import json

    from omegaconf import OmegaConf
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    from speechkit.data import DropReport

    checkpoint = tmp_path / "ctc"
    vocab = {c: i for i, c in enumerate(["[PAD]", "[UNK]", "|", *"abcdefghijklmnopqrstuvwxy"])}  # no "z"
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(), tokenizer=tokenizer).save_pretrained(checkpoint)
    Wav2Vec2ForCTC(Wav2Vec2Config(**SMALL_ARCH, vocab_size=len(vocab), pad_token_id=0)).save_pretrained(checkpoint)
    head = Wav2Vec2ForCTC.from_pretrained(checkpoint).lm_head.weight

    cfg = OmegaConf.to_object(compose("train", ["model=wav2vec2_base", f"model.name_or_path={checkpoint}",
                                                "task.vocab.source=pretrained", f"run_dir={tmp_path / 'run'}"]))
    (tmp_path / "run").mkdir()
    task = make_task(cfg)
    task.model_config(cfg.model)
    from datasets import Dataset

    rows = Dataset.from_dict({"audio": ["a.wav", "b.wav"], "text": ["a cab", "a zebra"]})
    report = DropReport()
    train_rows, _ = task.fit_targets(rows, rows, ("train", "test"), report, str(tmp_path / "run"), True)
    assert len(train_rows) == 1 and [(r["split"], r["reason"]) for r in report.rows] == [("train",
                                                                                          "chars_outside_vocab")]
    saved = json.loads(open(RunDir(str(tmp_path / "run")).vocab).read())
    assert vocab.items() <= saved.items()  # its symbols, with the ids its head was trained on
    model = task.build_model(cfg.model, str(tmp_path / "run"))
    assert model.lm_head.out_features == len(vocab) and torch.equal(model.lm_head.weight, head)
    assert task.processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert task.targets(train_rows) == [tokenizer("a cab").input_ids]

    scratch = compose("train", ["model=tiny", "task.vocab.source=pretrained", "run_dir=/x"])
    from speechkit.validation import check_values

    with pytest.raises(ConfigError, match=r"^task\.vocab\.source='pretrained' is not allowed: .*built from scratch"):
        check_values(scratch)
CONV_ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 conv_dim=[16, 16, 32, 32], conv_kernel=[10, 8, 4, 4], conv_stride=[5, 4, 4, 4],
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8)
W2V_BERT_ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     output_hidden_size=32, conv_depthwise_kernel_size=3, vocab_size=8)


@pytest.mark.parametrize("model_type,arch", [
    ("wav2vec2", dict(CONV_ARCH, feat_extract_norm="layer")),
    ("wav2vec2", dict(CONV_ARCH, add_adapter=True, adapter_stride=2, num_adapter_layers=2, output_hidden_size=32)),
    ("hubert", CONV_ARCH),
    ("wavlm", dict(CONV_ARCH, num_buckets=16, max_bucket_distance=32)),
    ("wavlm", dict(CONV_ARCH, num_buckets=16, max_bucket_distance=32, add_adapter=True, adapter_stride=3,
                   num_adapter_layers=1, output_hidden_size=32)),
    ("wav2vec2-bert", W2V_BERT_ARCH),
    ("wav2vec2-bert", dict(W2V_BERT_ARCH, add_adapter=True)),
])
def test_a_ctc_familys_output_lengths_are_the_models_own(model_type, arch):
    """Every CTC-capable family says the output frames of a batch's clips from the lengths its attention mask covers
    (samples for a waveform encoder, stacked filter-bank frames for w2v-BERT): the tiny random-init model's own
    _get_feat_extract_output_lengths of the same mask, and output_frames clip by clip, edges included."""
    from transformers import AutoConfig, AutoModelForCTC

    config = AutoConfig.for_model(model_type, **arch)
    family = family_of(model_type)
    assert family.has_head(model_type, "ctc")
    model = AutoModelForCTC.from_config(config).eval()
    fe = family.new_feature_extractor(config, 16000)
    field = family.receptive_field(config, 16000)
    sizes = [field, field + 1, field + 159, 881, 1361, 3200, 16000, 23456]
    clips = [torch.randn(n, generator=torch.Generator().manual_seed(n)).numpy() for n in sizes]
    batch = family.inputs(config, fe)(clips)
    lengths = batch["attention_mask"].sum(-1)
    ours = family.output_lengths(config, lengths)
    assert ours.tolist() == model._get_feat_extract_output_lengths(lengths).tolist()
    assert ours.tolist() == [family.output_frames(config, n, 16000) for n in sizes]
    assert min(ours.tolist()) >= 1
    with torch.no_grad():  # the longest clip's frames: the batch's logits (w2v-BERT: one more where the longest
        # clip has an odd last filter-bank frame, stacked with padding outside the mask)
        frames = model(**{k: batch[k] for k in (fe.model_input_names[0], "attention_mask")}).logits.shape[1]
    assert frames - max(ours) == (1 if model_type == "wav2vec2-bert" and (1 + (sizes[-1] - 400) // 160) % 2 else 0)
