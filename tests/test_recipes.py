"""The two published recipes as configs: their data configs run against local copies of the Hub data sets,
and their experiments compose with every value of the originals."""

import pytest

from conftest import compose
from support.hub_fixtures import FLEURS_KEPT, LIBRISPEECH_LINES, make_fleurs, make_librispeech
from speechkit import data


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("librispeech_asr"))


@pytest.fixture(scope="module")
def fleurs(tmp_path_factory):
    return make_fleurs(tmp_path_factory.mktemp("fleurs"))


def test_superb_config_carves_librispeech_test_clean_80_20(librispeech):
    cfg = compose("train", ["dataset=superb", f"dataset.path={librispeech}", "run_dir=/x"]).dataset
    report = data.DropReport()
    splits = data.load_splits(cfg, {"train": True, "test": False}, 16000, report)
    assert (len(splits["train"]), len(splits["test"])) == (16, 4)  # 80/20 of 20, as 2096/524 of 2620
    assert report.rows == []
    texts = data.texts(splits["train"]) + data.texts(splits["test"])
    expected = {line.lower().replace(",", "").replace("?", "").replace(";", "") for line in LIBRISPEECH_LINES}
    assert set(texts) == expected  # lower-cased, the recipe's punctuation removed, apostrophes kept
    assert "it's a long way to the sea" in texts
    # speaker/chapter ids dropped; the decoded clip kept beside its length and peak
    assert splits["train"].column_names == ["audio", "text", "num_samples", "peak", "pcm"]
    again = data.load_splits(cfg, {"test": False}, 16000, data.DropReport())
    assert data.texts(again["test"]) == data.texts(splits["test"])  # the fixed seed carves the same way


def test_fleurs_config_normalizes_and_drops_silent_clips(fleurs):
    cfg = compose("train", ["dataset=fleurs_es", f"dataset.path={fleurs}", "run_dir=/x"]).dataset
    report = data.DropReport()
    splits = data.load_splits(cfg, {"train": True, "validation": False, "test": False}, 16000, report)
    for split, expected in FLEURS_KEPT.items():
        assert data.texts(splits[split]) == expected, split
    assert report.counts("train") == {"silent": 2} and report.counts("test") == {"silent": 1}
    assert report.counts("validation") == {}
    assert all(r["file"].endswith(".wav") and "peak" in r["detail"] for r in report.rows)


AWS_RECIPE = {
    "dataset.name": "superb", "dataset.path": "openslr/librispeech_asr", "dataset.config_name": "clean",
    "dataset.columns.text": "text", "dataset.carve.from_split": "test", "dataset.carve.test_ratio": 0.2,
    "dataset.carve.train_name": "train", "dataset.carve.test_name": "test", "dataset.eval_split": "test",
    "dataset.filters.max_duration_s": None, "model.name_or_path": "facebook/wav2vec2-base",
    "model.freeze_feature_encoder": True, "model.gradient_checkpointing": True, "trainer.num_epochs": 10,
    "trainer.batch_size": 8, "trainer.eval_batch_size": 32, "trainer.learning_rate": 1e-4,
    "trainer.weight_decay": 0.005, "trainer.warmup_steps": 500, "hw.mixed_precision": "fp16",
    "trainer.eval_steps": 500, "trainer.logging_steps": 500, "trainer.save_steps": 500,
    "trainer.eval_at_epoch_end": False,
    # left as the checkpoint says: the recipe does not set them
    "model.attention_dropout": None, "model.hidden_dropout": None, "model.activation_dropout": None,
    "model.feat_proj_dropout": None, "model.final_dropout": None, "model.mask_time_prob": None,
    "model.layerdrop": None,
}


@pytest.mark.parametrize("key,value", sorted(AWS_RECIPE.items()))
def test_aws_superb_experiment_has_every_recipe_value(key, value):
    from omegaconf import OmegaConf

    got = OmegaConf.select(compose("train", ["experiment=aws_superb", "run_dir=/x"]), key)
    assert (got.value if hasattr(got, "value") else got) == value


ROCM_RECIPE = {
    "dataset.path": "google/fleurs", "dataset.data_dir": "es_419", "dataset.revision": "refs/convert/parquet",
    "dataset.columns.text": "raw_transcription", "dataset.text.unidecode": True, "dataset.text.lowercase": True,
    "dataset.text.digits": "remove", "dataset.filters.silence_peak": 1e-4,
    "model.name_or_path": "facebook/wav2vec2-large-xlsr-53",
    "trainer.num_epochs": 5, "trainer.learning_rate": 3e-4, "trainer.batch_size": 4, "trainer.warmup_steps": 50,
    "hw.backend": "rocm", "hw.mixed_precision": "fp16", "model.gradient_checkpointing": True,
    "model.freeze_feature_encoder": True, "model.attention_dropout": 0.1, "model.hidden_dropout": 0.1,
    "model.activation_dropout": None, "model.feat_proj_dropout": 0.0, "model.mask_time_prob": 0.05,
    "model.layerdrop": 0.1, "task.ctc_loss_reduction": "mean", "trainer.eval_at_epoch_end": True,
    "dataset.eval_split": "validation",  # the published WER by epoch is the Trainer's eval_dataset: validation
}


@pytest.mark.parametrize("key,value", sorted(ROCM_RECIPE.items()))
def test_rocm_fleurs_es_experiment_has_every_recipe_value(key, value):
    from omegaconf import OmegaConf

    cfg = compose("train", ["experiment=rocm_fleurs_es", "hw=rocm", "run_dir=/x"])
    got = OmegaConf.select(cfg, key)
    assert (got.value if hasattr(got, "value") else got) == value


def test_rocm_recipe_keeps_fp16_whatever_hw_is_chosen():
    cfg = compose("train", ["experiment=rocm_fleurs_es", "hw=cuda", "run_dir=/x"])
    assert cfg.hw.backend == "cuda" and cfg.hw.mixed_precision == "fp16"
