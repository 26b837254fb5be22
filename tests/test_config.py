"""Composition of the real config tree, and the errors a user gets for a bad config."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF, compose, run_cli
from speechkit.config import ConfigError, check_required

GROUPS = ["dataset", "vocab", "model", "hw", "trainer", "logger", "experiment", "hparams_search", "debug"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes(group, option):
    cfg = compose("train", [f"{group}={option}", "run_dir=/tmp/unused"])
    assert OmegaConf.is_config(cfg)
    if group not in ("experiment", "hparams_search", "debug"):
        assert group in cfg
    OmegaConf.to_yaml(cfg)  # every interpolation resolvable in text form


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_composes_for_evaluate(option):
    cfg = compose("evaluate", [f"dataset={option}", "model_dir=/m", "run_dir=/tmp/unused"])
    assert cfg.dataset.name


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


def test_demo_experiment_overlays_groups():
    cfg = compose("train", ["experiment=demo", "run_dir=/tmp/x"])
    assert cfg.dataset.name == "demo_en" and cfg.model.name == "tiny" and cfg.hw.backend == "cpu"
    assert cfg.model.name_or_path is None
    assert cfg.trainer.learning_rate != compose("train", ["run_dir=/tmp/x"]).trainer.learning_rate


def test_pretrained_models_point_at_the_hub_checkpoints():
    assert compose("train", ["model=wav2vec2_base", "run_dir=/x"]).model.name_or_path == "facebook/wav2vec2-base"
    assert compose("train", ["model=xlsr_53", "run_dir=/x"]).model.name_or_path == "facebook/wav2vec2-large-xlsr-53"


def test_misspelt_key_is_refused_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["trainer.learning_rat=1e-4"])
    assert "learning_rat" in str(err.value.__cause__ or err.value) or "learning_rat" in str(err.value)


def test_wrong_type_is_refused_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["trainer.batch_size=eight"])
    text = f"{err.value} {err.value.__cause__}"
    assert "batch_size" in text


def test_bad_enum_value_is_refused():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["dataset.text.digits=sometimes"])
    assert "digits" in f"{err.value} {err.value.__cause__}"


def test_missing_required_value_is_named_before_any_work():
    cfg = compose("train", ["dataset=audiofolder", "run_dir=/tmp/x"])
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        check_required(cfg)


def test_cli_misspelt_key_fails_with_clear_message():
    done = run_cli("train.py", "trainer.learning_rat=1e-4")
    assert done.returncode != 0
    assert "learning_rat" in done.stderr and "TrainerConfig" in done.stderr
    assert "Traceback" not in done.stderr  # a message, not a stack trace


def test_cli_unknown_group_option_lists_the_choices():
    done = run_cli("train.py", "model=wav2vec3")
    assert done.returncode != 0
    assert "model/wav2vec3" in done.stderr
    for option in options("model"):
        assert option in done.stderr


def test_cli_missing_model_dir_for_evaluate():
    done = run_cli("evaluate.py")
    assert done.returncode != 0 and "model_dir" in done.stderr


def test_cli_prints_composed_config():
    done = run_cli("train.py", "--cfg", "job", "dataset=hub", "dataset.path=google/fleurs", "model=xlsr_53")
    assert done.returncode == 0, done.stderr
    cfg = OmegaConf.create(done.stdout)
    assert cfg.model.name_or_path == "facebook/wav2vec2-large-xlsr-53"
    assert cfg.dataset.path == "google/fleurs"


def test_hparams_search_optuna_sets_up_the_sweeper():
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", ["hparams_search=optuna", "experiment=demo"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.storage is None  # in memory (see the config)
    assert set(sweeper.params) == {"trainer.learning_rate", "model.mask_time_prob", "model.layerdrop"}
    assert cfg.trainer.learning_rate == compose("train", ["experiment=demo", "run_dir=/x"]).trainer.learning_rate
