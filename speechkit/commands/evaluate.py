"""`python evaluate.py`: score a trained model directory on one split of a dataset config. The task is the one whose
head the model has (speechkit/tasks/__init__.py: load_model_dir); the scoring: speechkit/evaluation.py."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from speechkit.config import EvaluateConfig, check_required
from speechkit.evaluation import evaluate_saved_model
from speechkit.tasks.scoring import EvalResult


def run(raw_cfg: DictConfig) -> EvalResult:
    check_required(raw_cfg)
    cfg: EvaluateConfig = OmegaConf.to_object(raw_cfg)
    done = evaluate_saved_model(cfg)
    if done.main_process:
        result, dropped = done.result, done.dropped
        print(done.task.examples(result, cfg.num_examples))
        print(f"\n{cfg.dataset.name}/{cfg.split}: {result.summary}  "
              f"scored {len(result.rows)} {done.task.unit}, dropped {sum(dropped.values())}"
              + (f" ({', '.join(f'{k}={v}' for k, v in sorted(dropped.items()))})" if dropped else "")
              + "".join(f"\nWrote {path}" for path in done.written), flush=True)
    return done.result
