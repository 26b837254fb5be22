"""The shipped model's card (`model/README.md`, huggingface_hub's ModelCard) and, with `hub.push=true`, its upload
to the Hugging Face Hub."""

from __future__ import annotations

import logging
import os
import shlex
from typing import List, Optional

from huggingface_hub import EvalResult as HubEvalResult, HfApi, ModelCard, ModelCardData

from speechkit.config import HubConfig, TrainConfig, redact_override
from speechkit.models.adapters import card_section
from speechkit.rundir import RunDir
from speechkit.tasks.scoring import EvalResult

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("num_epochs", "max_steps", "batch_size", "batch_duration_s", "gradient_accumulation_steps",
                   "optimizer", "learning_rate", "weight_decay", "scheduler", "warmup_steps", "max_grad_norm", "seed")


def typed_overrides() -> List[str]:
    """What was typed after `python train.py` (none when the config was composed in-process)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def command_line(overrides: List[str]) -> str:
    """`python train.py <overrides>`, secrets redacted (by key name and by shape)."""
    shown = [redact_override(o) for o in overrides]
    return " ".join(["python train.py", *map(shlex.quote, shown)])


def model_card(cfg: TrainConfig, result: EvalResult, overrides: List[str], precision: str, task) -> ModelCard:
    """The card of the shipped model; `task`: the run's (speechkit/tasks/), which says what the model is, its
    pipeline, its scores and how to use it."""
    name = cfg.task.name
    scored = [s for s in task.scores(cfg.task) if s.key in result.metrics and s.hub_type]  # the Hub's metrics only
    ds = cfg.dataset
    language = ds.spoken_language()
    dataset_id = ds.path if ds.source.value == "hub" else ds.name
    results = [HubEvalResult(task_type=task.pipeline, dataset_type=dataset_id, dataset_name=ds.name,
                             dataset_config=ds.config_name, dataset_split=ds.eval_split, metric_type=s.hub_type,
                             metric_name=s.name, metric_value=round(float(result.metrics[s.key]), 4)) for s in scored]
    model_name = os.path.basename(os.path.dirname(os.path.abspath(RunDir(cfg.run_dir).model))) or "speechkit-model"
    data = ModelCardData(model_name=model_name, language=language, library_name="transformers",
                         pipeline_tag=task.pipeline, tags=["speechkit", "audio", name.replace("_", "-")],
                         base_model=cfg.model.name_or_path, datasets=[dataset_id] if ds.source.value == "hub" else None,
                         eval_results=results)
    trainer = cfg.trainer
    rows = "\n".join(f"| {k} | {getattr(getattr(trainer, k), 'value', getattr(trainer, k))} |" for k in HYPERPARAMETERS
                     if getattr(trainer, k) is not None)
    scores = "\n".join(f"| {s.name} | {float(result.metrics[s.key]):.4f} |" for s in scored)
    shipped_class = (task.config.architectures or ["AutoModel"])[0]  # set as model/ was saved
    origin = (f"fine-tuned from `{cfg.model.name_or_path}`" if cfg.model.name_or_path
              else f"trained from scratch (`model={cfg.model.name}`, random init)")
    content = f"""---
{data.to_yaml()}
---

# {model_name}

{task.card_kind} model {origin} with speechkit on `{ds.name}`; scored on its `{ds.eval_split}` split
({len(result.rows)} {task.unit}).

## Results on `{ds.eval_split}`

| metric | value |
| --- | --- |
{scores}

## Training

| hyperparameter | value |
| --- | --- |
{rows}
| mixed precision | {precision} |

Trained with:

```bash
{command_line(overrides)}
```

The full resolved configuration (secrets redacted) is the run's `config.yaml`.

{card_section(cfg.adapter, cfg.model.name_or_path, language, shipped_class)}
## Use

```python
{task.card_usage}
```
"""
    return ModelCard(content)


def write_card(cfg: TrainConfig, result: EvalResult, overrides: List[str], precision: str, task) -> str:
    """model/README.md."""
    path = os.path.join(RunDir(cfg.run_dir).model, "README.md")
    model_card(cfg, result, overrides, precision, task).save(path)
    return path


def push(model_dir: str, hub: HubConfig, api: Optional[HfApi] = None) -> str:
    """Upload `model_dir` to `hub.repo_id` (created if needed); returns the commit URL. The token is huggingface_hub's
    own (HF_TOKEN or `hf auth login`), never speechkit's config."""
    api = api or HfApi()
    api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
    commit = api.upload_folder(repo_id=hub.repo_id, folder_path=model_dir, revision=hub.revision,
                               commit_message=hub.commit_message)
    log.info("Pushed %s to the Hub: %s", model_dir, getattr(commit, "commit_url", commit))
    return str(getattr(commit, "commit_url", commit))
