"""The shipped model's card (`model/README.md`, huggingface_hub's ModelCard) and, with `hub.push=true`, its upload
to the Hugging Face Hub."""

from __future__ import annotations

import logging
import os
import shlex
from typing import List, Optional

from huggingface_hub import EvalResult as HubEvalResult, HfApi, ModelCard, ModelCardData

from speechkit.config import HubConfig, TrainConfig, is_secret_key
from speechkit.rundir import RunDir
from speechkit.tasks.scoring import EvalResult

log = logging.getLogger(__name__)

# The Hub's task tag per task (diarization: the tag pyannote's segmentation models carry; transformers has no pipeline)
PIPELINES = {"asr": "automatic-speech-recognition", "audio_classification": "audio-classification",
             "diarization": "voice-activity-detection"}
# model-index entries: metrics.jsonl key -> (metric type, name shown on the Hub)
HUB_METRICS = {"eval_wer": ("wer", "WER"), "eval_cer": ("cer", "CER"), "eval_accuracy": ("accuracy", "Accuracy"),
               "eval_macro_f1": ("f1", "Macro F1"), "eval_map": ("map", "mAP"), "eval_der": ("der", "DER")}
HYPERPARAMETERS = ("num_epochs", "max_steps", "batch_size", "batch_duration_s", "gradient_accumulation_steps",
                   "learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "seed")


def typed_overrides() -> List[str]:
    """What was typed after `python train.py` (none when the config was composed in-process)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def command_line(overrides: List[str]) -> str:
    """`python train.py <overrides>`, values of secret-looking keys redacted."""
    shown = [f"{o.split('=', 1)[0]}=<redacted>" if "=" in o and is_secret_key(o.split("=", 1)[0]) else o
             for o in overrides]
    return " ".join(["python train.py", *map(shlex.quote, shown)])


def model_card(cfg: TrainConfig, result: EvalResult, overrides: List[str], precision: str, unit: str) -> ModelCard:
    task = cfg.task.name.value
    ds = cfg.dataset
    language = ds.language or (ds.demo.language if ds.source.value == "demo" else None)
    dataset_id = ds.path if ds.source.value == "hub" else ds.name
    results = [HubEvalResult(task_type=PIPELINES[task], dataset_type=dataset_id, dataset_name=ds.name,
                             dataset_config=ds.config_name, dataset_split=ds.eval_split, metric_type=kind,
                             metric_name=name, metric_value=round(float(result.metrics[key]), 4))
               for key, (kind, name) in HUB_METRICS.items() if key in result.metrics]
    model_name = os.path.basename(os.path.dirname(os.path.abspath(RunDir(cfg.run_dir).model))) or "speechkit-model"
    data = ModelCardData(model_name=model_name, language=language, library_name="transformers",
                         pipeline_tag=PIPELINES[task], tags=["speechkit", "audio", task.replace("_", "-")],
                         base_model=cfg.model.name_or_path, datasets=[dataset_id] if ds.source.value == "hub" else None,
                         eval_results=results)
    trainer = cfg.trainer
    rows = "\n".join(f"| {k} | {getattr(trainer, k)} |" for k in HYPERPARAMETERS if getattr(trainer, k) is not None)
    scores = "\n".join(f"| {name} | {float(result.metrics[key]):.4f} |" for key, (_, name) in HUB_METRICS.items()
                       if key in result.metrics)
    origin = (f"fine-tuned from `{cfg.model.name_or_path}`" if cfg.model.name_or_path
              else f"trained from scratch (`model={cfg.model.name}`, random init)")
    kind = {"asr": "A speech recognition (CTC)", "audio_classification": "An audio classification",
            "diarization": "A speaker diarization (per-frame speaker activity)"}[task]
    usage = {"asr": 'from transformers import pipeline\n'
                    'asr = pipeline("automatic-speech-recognition", model="<this folder or repo>")\n'
                    'print(asr("clip.wav")["text"])',
             "audio_classification": 'from transformers import pipeline\n'
                                     'classify = pipeline("audio-classification", model="<this folder or repo>")\n'
                                     'print(classify("clip.wav"))',
             "diarization": 'from transformers import AutoModelForAudioFrameClassification\n'
                            'model = AutoModelForAudioFrameClassification.from_pretrained("<this folder or repo>")\n'
                            '# who spoke when, as RTTM: python diarize.py model_dir=<this folder> audio=a.wav'}[task]
    content = f"""---
{data.to_yaml()}
---

# {model_name}

{kind} model {origin} with speechkit on `{ds.name}`; scored on its `{ds.eval_split}` split
({len(result.rows)} {unit}).

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

## Use

```python
{usage}
```
"""
    return ModelCard(content)


def write_card(cfg: TrainConfig, result: EvalResult, overrides: List[str], precision: str, unit: str) -> str:
    """model/README.md; `unit`: what the task scores (its `unit`: utterances, clips, recordings)."""
    path = os.path.join(RunDir(cfg.run_dir).model, "README.md")
    model_card(cfg, result, overrides, precision, unit).save(path)
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
