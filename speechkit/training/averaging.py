"""Weight averaging (conf/trainer): an exponential moving average of the weights (trainer.ema_decay) and the
average of the last checkpoints (trainer.average_last, as icefall and ESPnet ship). Each is a candidate at the end
of training: scored on the eval split beside the weights trainer.final_model chose, and shipped only when it scores
better (the log says which won, and by how much).

    ema = WeightAverage(model, decay)      after each optimizer step: ema.update(model)
    ema.save(folder) / ema.load(folder)    ema.safetensors in a checkpoint: resume continues the same average
    average_of(paths)                      the mean of several checkpoints' model.safetensors
"""

from __future__ import annotations

import os
from typing import Dict, List

import torch

EMA_FILE = "ema.safetensors"


def trainable(model) -> Dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class WeightAverage:
    """The EMA of a model's trainable weights, in float32 on the model's device. Its decay warms up as
    min(decay, (1 + n) / (10 + n)) after n updates, so a short run is not pulled towards its random start."""

    def __init__(self, model, decay: float):
        self.decay, self.updates = decay, 0
        self.weights = {name: p.detach().float().clone() for name, p in trainable(model).items()}

    @torch.no_grad()
    def update(self, model) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names = list(self.weights)
        params = trainable(model)
        torch._foreach_lerp_([self.weights[n] for n in names], [params[n].detach().float() for n in names],
                             1.0 - decay)

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        save_file({n: w.contiguous().cpu() for n, w in self.weights.items()}, os.path.join(folder, EMA_FILE),
                  metadata={"updates": str(self.updates), "decay": str(self.decay)})

    def load(self, folder: str) -> None:
        from safetensors import safe_open

        path = os.path.join(folder, EMA_FILE)
        with safe_open(path, framework="pt") as f:
            self.updates = int(f.metadata()["updates"])
            for n in self.weights:
                self.weights[n].copy_(f.get_tensor(n))

    def state(self) -> Dict[str, torch.Tensor]:
        return self.weights


def average_of(paths: List[str]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point weights of several checkpoints (their model.safetensors); other
    tensors (counters, masks) are the newest one's."""
    from safetensors.torch import load_file

    total = None
    for path in paths:
        weights = load_file(os.path.join(path, "model.safetensors"))
        if total is None:
            total = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
            continue
        for k, v in weights.items():
            total[k] = total[k] + v.double() if v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


@torch.no_grad()
def swap_in(model, weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Copy `weights` (by parameter name) into the model; returns what they replaced, to swap back."""
    params = dict(model.named_parameters())
    replaced = {}
    for name, w in weights.items():
        if name in params:
            replaced[name] = params[name].detach().clone()
            params[name].copy_(w.to(params[name].dtype))
    return replaced
