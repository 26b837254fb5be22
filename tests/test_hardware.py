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
