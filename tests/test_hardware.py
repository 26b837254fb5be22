"""hw selection and refusals, on this machine's real torch build."""

import logging

import pytest
import torch

from conftest import compose, run_cli
from speechkit.config import Backend, ConfigError, Precision
from speechkit.hardware import make_accelerator, resolve


def hw(*overrides):
    return compose("train", [*overrides, "run_dir=/x"]).hw


def test_every_hw_option_composes_to_its_documented_precision():
    from conftest import CONF, compose

    expected = {"auto": "auto", "cpu": "no", "cuda": "fp16", "rocm": "bf16", "sagemaker": "auto"}
    assert {p.stem for p in (CONF / "hw").glob("*.yaml")} == set(expected)
    for option, precision in expected.items():
        assert compose("train", [f"hw={option}", "run_dir=/x"]).hw.mixed_precision == precision, option


def test_auto_picks_what_this_machine_has_and_says_so(caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(hw())
    chosen = resolve(cfg)
    if not torch.cuda.is_available():
        assert chosen.backend == Backend.cpu and chosen.precision == Precision.no
        assert "no GPU" in chosen.reason
    else:
        assert chosen.backend in (Backend.cuda, Backend.rocm) and chosen.precision != Precision.no
    with caplog.at_level(logging.INFO, logger="speechkit.hardware"):
        make_accelerator(cfg)
    assert f"Hardware: {chosen.backend.value} (auto:" in caplog.text


def test_the_log_names_the_distribution_in_force_and_an_asked_one_not_applied(caplog, monkeypatch):
    """A launch config asking for FSDP (as `accelerate launch --config_file accelerate/fsdp.yaml` does, through
    ACCELERATE_USE_FSDP) on the CPU: accelerate runs without it, and the log says so instead of staying silent."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(hw("hw=cpu"))
    with caplog.at_level(logging.INFO, logger="speechkit.hardware"):
        make_accelerator(cfg)
    assert "1 process(es), distribution none (one process)" in caplog.text and "not applied" not in caplog.text
    caplog.clear()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.INFO, logger="speechkit.hardware"):
        make_accelerator(cfg)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ("The launch asked for FSDP (its accelerate config), but it is not applied: FSDP shards the "
                       "training state across GPUs, and accelerate applies it on GPUs only (this run is on cpu, "
                       "hw=cpu). Training runs as none (one process): every process holds the whole model, "
                       "checkpoints hold full weights")


def test_rocm_is_refused_on_a_torch_without_hip():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(hw("hw=rocm"))
    if torch.version.hip:
        assert resolve(cfg).backend == Backend.rocm
        return
    with pytest.raises(ConfigError, match=r"hw=rocm needs a ROCm build of torch.*torch.version.hip is None"):
        resolve(cfg)


def test_cuda_without_a_gpu_is_refused():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(hw("hw=cuda"))
    if torch.cuda.is_available() and not torch.version.hip:
        assert resolve(cfg) .backend == Backend.cuda
        return
    with pytest.raises(ConfigError, match="hw=cuda"):
        resolve(cfg)


def test_fp16_on_cpu_is_an_error_not_a_silent_fallback():
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        resolve(OmegaConf.to_object(hw("hw=cpu", "hw.mixed_precision=fp16")))
    assert resolve(OmegaConf.to_object(hw("hw=cpu", "hw.mixed_precision=bf16"))).precision == Precision.bf16


def test_cli_refuses_rocm_before_touching_data(tmp_path):
    data, model = tmp_path / "fleurs", tmp_path / "xlsr"  # local copies (empty: reading either would fail), so
    data.mkdir()                                           # that the Hub is not asked first
    model.mkdir()
    done = run_cli("train.py", "experiment=rocm_fleurs_es", "hw=rocm", f"dataset.path={data}",
                   f"model.name_or_path={model}", f"hydra.run.dir={tmp_path / 'run'}")
    if torch.version.hip:
        pytest.fail("this test expects a non-ROCm torch build")  # CI and dev machines run CPU torch
    assert done.returncode == 2
    assert "hw=rocm needs a ROCm build of torch" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "vocab.json").exists()


def test_data_loading_and_optimizer_follow_the_device():
    """CPU: batches made in the main process (workers would take the model's cores), no pinned memory, the fused
    AdamW; a GPU gets workers, pinned memory, prefetching and the fused AdamW; trainer.num_workers wins."""
    from omegaconf import OmegaConf

    from speechkit.hardware import loader_settings, optimizer_settings

    from accelerate.state import AcceleratorState

    accelerator = make_accelerator(OmegaConf.to_object(hw("hw=cpu")))
    assert accelerator.device.type == "cpu"  # hw=cpu, even where a GPU is there
    assert loader_settings(accelerator) == {"num_workers": 0, "pin_memory": False}
    assert optimizer_settings(accelerator) == {"fused": True}
    assert loader_settings(accelerator, 2) == {"num_workers": 2, "pin_memory": False, "prefetch_factor": 4,
                                               "persistent_workers": True}
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one device per process
    gpu = make_accelerator(OmegaConf.to_object(hw())) if torch.cuda.is_available() else None
    if gpu is not None:
        settings = loader_settings(gpu)
        assert settings["pin_memory"] and settings["num_workers"] >= 1 and settings["persistent_workers"]
        assert optimizer_settings(gpu) == {"fused": True}


# model option with tiny sizes -> (its head, the layer classes FSDP wraps, how many layers)
FSDP_MODELS = {
    "tiny": (["model.architecture.num_hidden_layers=2"], "ctc", ["Wav2Vec2EncoderLayerStableLayerNorm"], 2),
    "tiny_group_norm": (["model.architecture.num_hidden_layers=2", "model.architecture.feat_extract_norm=group",
                         "model.architecture.do_stable_layer_norm=false"], "ctc", ["Wav2Vec2EncoderLayer"], 2),
    "whisper_scratch": (["model.architecture.encoder_layers=2", "model.architecture.decoder_layers=1"], "seq2seq",
                        ["WhisperDecoderLayer", "WhisperEncoderLayer"], 3),
    "ast_tiny": (["model.architecture.num_hidden_layers=2"], "classification", ["ASTLayer"], 2),
}


def fsdp_plugin(monkeypatch):
    """accelerate's FSDP plugin as `accelerate launch --config_file accelerate/fsdp.yaml` makes it in train.py: the
    file read by accelerate's own parser, its environment set, the plugin built from it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    from conftest import REPO

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "accelerate" / "fsdp.yaml"),
                                              str(REPO / "train.py")])
    args, _, _ = _validate_launch_command(args)
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    return FullyShardedDataParallelPlugin()


@pytest.mark.parametrize("name", sorted(FSDP_MODELS))
def test_fsdp_shards_each_layer_the_family_names(name, monkeypatch, caplog):
    """accelerate/fsdp.yaml names no layer classes: speechkit gives FSDP the family's (ModelFamily.layer_classes),
    whatever the model, and says them. accelerate's own FSDP2 wrap policy, with the plugin the file makes, then takes
    every layer of a wav2vec2 (either layer norm), a Whisper (encoder and decoder) and an AST, each one unit; its
    default, transformers' _no_split_modules, takes none of wav2vec2's. (accelerate applies FSDP on GPUs only and
    runs a CPU launch of the file as DDP: test_the_log_names_the_distribution_in_force_and_an_asked_one_not_applied;
    two CPU processes sharded by torch's FSDP2 itself: test_scale.py.)"""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from omegaconf import OmegaConf

    from speechkit.hardware import shard_by_layer
    from speechkit.models import build_model, family_of

    overrides, head, classes, layers = FSDP_MODELS[name]
    option = "tiny" if name.startswith("tiny") else name
    cfg = OmegaConf.to_object(compose("train", [f"model={option}", *overrides, "run_dir=/x"])).model
    head_config = {"seq2seq": {}, "ctc": {"vocab_size": 8, "pad_token_id": 7},
                   "classification": {"num_labels": 3}}[head]
    model = build_model(cfg, head, **head_config)
    family = family_of(model.config.model_type)
    assert family.layer_classes(model) == classes

    plugin = fsdp_plugin(monkeypatch)
    assert plugin.transformer_cls_names_to_wrap is None  # the file leaves them to speechkit
    if name.startswith("tiny"):  # accelerate's default would wrap no layer of a wav2vec2
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        assert type(model)._no_split_modules is None and not any(policy(m) for m in model.modules())
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
    with caplog.at_level(logging.INFO, logger="speechkit.hardware"):
        shard_by_layer(accelerator, family.layer_classes(model), type(model).__name__)
    assert f"FSDP shards {type(model).__name__} layer by layer: {', '.join(classes)}" in caplog.text
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [m for m in model.modules() if policy(m)]
    assert sorted({type(m).__name__ for m in wrapped}) == classes and len(wrapped) == layers


def test_an_accelerate_config_naming_its_own_layer_classes_or_another_policy_keeps_them(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    from speechkit.hardware import wrap_layers

    fsdp_plugin(monkeypatch)  # the file's environment
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "MyLayer")
    assert wrap_layers(FullyShardedDataParallelPlugin(), ["WhisperEncoderLayer"]) == ["MyLayer"]
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP")
    assert wrap_layers(FullyShardedDataParallelPlugin(), ["WhisperEncoderLayer"]) is None
