"""trainer.ema_decay and trainer.average_last: the average is what it says, resumes exactly, is scored at the end and
changes the shipped weights exactly when the log says it does."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_DEMO, TINY, compose, run_cli, stopped_copy
from speechkit.training.averaging import WeightAverage, average_of, swap_in


def test_the_moving_average_follows_its_warmed_up_decay():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen weights are not averaged
    ema = WeightAverage(model, 0.9)
    assert set(ema.weights) == {"weight"}
    expected = model.weight.detach().clone()
    for n in range(1, 40):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    assert torch.allclose(ema.weights["weight"], expected, atol=1e-5) and ema.updates == 39


def test_saved_averages_load_back_and_swap_in_and_out(tmp_path):
    from safetensors.torch import save_file

    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, 0.99)
    with torch.no_grad():
        model.weight.mul_(2)
    ema.update(model)
    ema.save(tmp_path)
    other = WeightAverage(model, 0.99)
    other.load(tmp_path)
    assert other.updates == 1 and torch.equal(other.weights["weight"], ema.weights["weight"])
    for i, scale in enumerate((1.0, 3.0)):
        (tmp_path / f"step-{i}").mkdir()
        save_file({"weight": torch.full((2, 3), scale), "bias": torch.zeros(2)}, tmp_path / f"step-{i}" /
                  "model.safetensors")
    mean = average_of([str(tmp_path / "step-0"), str(tmp_path / "step-1")])
    assert torch.equal(mean["weight"], torch.full((2, 3), 2.0))
    before = model.weight.detach().clone()
    replaced = swap_in(model, mean)
    assert torch.equal(model.weight, mean["weight"]) and torch.equal(replaced["weight"], before)
    swap_in(model, replaced)
    assert torch.equal(model.weight, before)


RUN = ["experiment=demo", *SMALL_DEMO, *TINY, "trainer.max_steps=8", "trainer.batch_size=4",
       "trainer.batch_duration_s=null", "trainer.warmup_steps=2", "trainer.logging_steps=1",
       "trainer.progress_bar=false", "trainer.save_steps=2", "trainer.save_total_limit=null", "trainer.eval_steps=null",
       "trainer.eval_at_epoch_end=false", "trainer.final_model=last", "trainer.average_last=3"]


def _cfg(run_dir, *extra):
    return compose("train", [*RUN, "trainer.ema_decay=0.6", f"run_dir={run_dir}", *extra])


@pytest.mark.slow
def test_averages_are_scored_shipped_as_the_log_says_and_resume_exactly(tmp_path, caplog):
    from speechkit.commands import train

    full = tmp_path / "full"
    with caplog.at_level("INFO"):
        train.run(_cfg(full))
    verdicts = re.findall(r"Weight averaging: (the moving average|the average of the last 3 checkpoints) .*?: "
                          r"(shipped instead|not shipped)", caplog.text)
    assert [v[0] for v in verdicts] == ["the moving average", "the average of the last 3 checkpoints"]
    assert "(step-4, step-6, step-8)" in caplog.text
    shipped = load_file(full / "model" / "model.safetensors")
    last = load_file(full / "checkpoints" / "step-8" / "model.safetensors")
    ema = load_file(full / "checkpoints" / "step-8" / "ema.safetensors")
    mean = average_of([str(full / "checkpoints" / f"step-{s}") for s in (4, 6, 8)])
    winner = [name for name, verdict in verdicts if verdict == "shipped instead"]
    expected = {"the moving average": ema, "the average of the last 3 checkpoints": mean}.get(
        winner[-1] if winner else None, last)
    name = "lm_head.weight"
    assert torch.allclose(shipped[name], expected[name].to(shipped[name].dtype))
    assert not torch.allclose(ema[name], last[name])  # the average is not the last weights
    final = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "eval"

    stopped = stopped_copy(full, tmp_path / "stopped", ("step-6", "step-8"))  # resumed after step 4: same average
    train.run(_cfg(stopped, "trainer.resume=auto"))
    again = load_file(stopped / "checkpoints" / "step-8" / "ema.safetensors")
    assert all(torch.equal(ema[k], again[k]) for k in ema)
    assert torch.equal(load_file(stopped / "model" / "model.safetensors")[name], shipped[name])

    refused = run_cli("train.py", *RUN, "trainer.ema_decay=0.9", "trainer.resume=auto", f"hydra.run.dir={stopped}")
    assert refused.returncode == 2 and "trainer.ema_decay=0.6 then, 0.9 now" in refused.stderr


def test_averaging_settings_are_refused_where_they_cannot_work():
    from speechkit.config import ConfigError
    from speechkit.validation import check_values

    for overrides, key in ((["trainer.ema_decay=1.0"], "trainer.ema_decay"),
                           (["trainer.average_last=1"], "trainer.average_last"),
                           (["trainer.average_last=3", "trainer.save_total_limit=2"], "trainer.save_total_limit"),
                           (["trainer.average_last=3", "trainer.save_steps=null"], "trainer.save_steps")):
        with pytest.raises(ConfigError, match=rf"^{key}="):
            check_values(compose("train", overrides))
