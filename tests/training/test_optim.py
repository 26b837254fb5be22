"""trainer.optimizer and trainer.scheduler: the libraries' own implementations, the learning rate each schedule gives
by step, and exact resume for each (a run stopped and resumed ends with the very weights of an uninterrupted one)."""

import json
import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import SMALL_DEMO, TINY, compose
from speechkit.commands import train
from speechkit.config import ConfigError
from speechkit.training.optim import make_optimizer, make_scheduler


def _trainer(*overrides):
    return OmegaConf.to_object(compose("train", ["run_dir=/x", *overrides])).trainer


def _rates(scheduler_name, total=100, warmup=10, **extra):
    cfg = _trainer(f"trainer.scheduler={scheduler_name}", f"trainer.warmup_steps={warmup}", "trainer.learning_rate=1.0",
                   *[f"trainer.{k}={v}" for k, v in extra.items()])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    scheduler = make_scheduler(cfg, optimizer, total)
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_each_schedule_warms_up_then_follows_its_shape():
    for name in ("linear", "cosine", "constant", "tri_stage"):
        rates = _rates(name)
        assert rates[:10] == pytest.approx([i / 10 for i in range(10)] if name != "tri_stage" else
                                           [0.05 + 0.95 * i / 10 for i in range(10)]), name  # tri_stage: from 5 %
        assert max(rates) == pytest.approx(1.0), name
    linear, cosine, constant, tri = (_rates(n) for n in ("linear", "cosine", "constant", "tri_stage"))
    assert linear[55] == pytest.approx((100 - 55) / 90)
    assert cosine[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert constant[10:] == [1.0] * 90
    # the wav2vec 2.0 paper's three stages: warmup, hold the peak for 40 % of the steps, decay linearly to 5 %
    assert tri[10:50] == [1.0] * 40 and tri[50] == pytest.approx(1.0)
    assert tri[99] == pytest.approx(0.05 + 0.95 * (1 - 49 / 50))
    assert all(a >= b for a, b in zip(tri[50:], tri[51:]))


def test_weight_decay_spares_biases_and_layer_norms_with_every_optimizer():
    model = torch.nn.Module()
    model.dense, model.layer_norm = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)  # named as transformers names them
    for name in ("adamw", "adafactor"):
        cfg = _trainer(f"trainer.optimizer={name}", "trainer.weight_decay=0.01")
        optimizer = make_optimizer(cfg, model, {})
        assert type(optimizer).__name__ == {"adamw": "AdamW", "adafactor": "Adafactor"}[name]
        decayed, spared = optimizer.param_groups
        assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
        assert decayed["params"] == [model.dense.weight]
        assert spared["params"] == [model.dense.bias, model.layer_norm.weight, model.layer_norm.bias]


def test_eight_bit_adamw_without_bitsandbytes_is_refused_naming_the_key():
    cfg = _trainer("trainer.optimizer=adamw_8bit")
    with pytest.raises(ConfigError, match="trainer.optimizer=adamw_8bit needs bitsandbytes"):
        make_optimizer(cfg, torch.nn.Linear(2, 2), {})


FAST = ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
        "trainer.progress_bar=false", "trainer.learning_rate=1e-3"]


def _resume_cfg(run_dir, components, *extra):
    return compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, *FAST, *components, "trainer.max_steps=6",
                             "trainer.save_steps=3", "trainer.save_total_limit=null", "model.hidden_dropout=0.1",
                             f"run_dir={run_dir}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("components", [["trainer.optimizer=adafactor", "trainer.scheduler=cosine"],
                                        ["trainer.scheduler=tri_stage"], ["trainer.scheduler=constant"]])
def test_every_optimizer_and_schedule_resumes_exactly(components, tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.run(_resume_cfg(full, components))
    shutil.copytree(full, stopped)
    for later in ("checkpoints/step-6", "checkpoints/best", "model"):
        shutil.rmtree(stopped / later)
    train.run(_resume_cfg(stopped, components, "trainer.resume=auto"))
    a = load_file(full / "checkpoints" / "step-6" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-6" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, stopped)]
    rates = [[m["learning_rate"] for m in log if m["kind"] == "train"] for log in logged]
    assert rates[1][-3:] == rates[0][3:]  # the resumed steps (appended to the copied log): the schedule as it was
    start = load_file(full / "checkpoints" / "step-3" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it did train after step 3
