"""One process of a two-process FSDP2 run on the CPU (gloo), started by torchrun from tests/training/test_scale.py:
a tiny model of a family sharded as accelerate's fsdp2_prepare_model shards it (torch's fully_shard on each module
the wrap policy picks, then on the root), with the plugin accelerate/fsdp.yaml makes and the layer classes speechkit
gives it (speechkit/hardware.py: shard_by_layer), then two training steps. accelerate itself applies FSDP on GPUs
only (on the CPU it runs the file as DDP), so this is FSDP2 itself on the layers speechkit names. Prints one JSON line."""

import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parents[2])]  # conftest; this checkout's speechkit


class Said(logging.Handler):
    """What speechkit's log says, kept."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main(option: str) -> None:
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from conftest import compose
    from speechkit.hardware import shard_by_layer
    from speechkit.models import build_model, family_of

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    sizes = {"whisper_scratch": ["model.architecture.encoder_layers=2", "model.architecture.decoder_layers=1"],
             "tiny": ["model.architecture.num_hidden_layers=2"]}[option]
    cfg = OmegaConf.to_object(compose("train", [f"model={option}", *sizes, "run_dir=/x"])).model
    if option == "whisper_scratch":
        model = build_model(cfg, "seq2seq")
        inputs = {"input_features": torch.randn(2, 80, 400), "labels": torch.randint(0, 100, (2, 6))}
    else:
        model = build_model(cfg, "ctc", vocab_size=8, pad_token_id=7)
        inputs = {"input_values": torch.randn(2, 16000), "labels": torch.randint(0, 7, (2, 5))}
    plugin = FullyShardedDataParallelPlugin()  # from the environment test_scale.py gives: accelerate/fsdp.yaml's
    said = Said()
    logging.getLogger("speechkit.hardware").addHandler(said)
    logging.getLogger("speechkit.hardware").setLevel(logging.INFO)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
    shard_by_layer(accelerator, family_of(model.config.model_type).layer_classes(model), type(model).__name__)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [m for m in model.modules() if policy(m)]
    names = sorted(type(m).__name__ for m in units)
    for module in units:
        fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    if dist.get_rank() == 0:
        print(json.dumps({"said": said.lines, "units": names,
                          "sharded": all(isinstance(m, FSDPModule) for m in units),
                          "local": sum(p.to_local().numel() for p in model.parameters()),
                          "total": sum(p.numel() for p in model.parameters()), "losses": losses,
                          "world": int(os.environ["WORLD_SIZE"])}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
