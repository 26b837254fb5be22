"""eval_sets: more evaluation sets scored at every evaluation beside the eval split, each with its own lines in
metrics.jsonl, the log (and so SageMaker's metrics), the trackers, curves.png and report.html; one of them, named by
trainer.best_eval_set, picks the best checkpoint; the shipped model's scores on each are what evaluate.py gives."""

import json
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_DEMO, TINY, compose

pytestmark = pytest.mark.slow

NOISY = ["+dataset@eval_sets.noisy=demo_en_shifted", "eval_sets.noisy.eval_split=test_noisy",
         *(f"eval_sets.noisy.{o.removeprefix('dataset.')}" for o in SMALL_DEMO)]  # demo_en's sentences, as trained


def test_an_eval_set_is_scored_at_every_evaluation_picks_the_best_checkpoint_and_is_reported(tmp_path, caplog):
    from PIL import Image

    from speechkit.commands import evaluate, train
    from speechkit.sagemaker.launch import metric_definitions

    run_dir = tmp_path / "run"
    cfg = compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, *NOISY, "trainer.best_eval_set=noisy",
                            "logger=tensorboard", "logger.name=tiny-run", "trainer.max_steps=6",
                            "trainer.eval_steps=2", "trainer.eval_at_epoch_end=false", "trainer.logging_steps=2",
                            "trainer.batch_size=4", "trainer.batch_duration_s=null", "trainer.learning_rate=3e-3",
                            "trainer.warmup_steps=1", "trainer.progress_bar=false", "hw=cpu", f"run_dir={run_dir}"])
    with caplog.at_level("INFO"):
        train.run(cfg)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if m["kind"] == "eval"]
    noisy = [m for m in metrics if m["kind"] == "eval_set"]
    assert [m["step"] for m in evals] == [m["step"] for m in noisy] == [2, 4, 6]
    assert {m["eval_set"] for m in noisy} == {"noisy"} and all(m["eval_utterances"] == 6 for m in noisy)
    assert [m["eval_wer"] for m in noisy] != [m["eval_wer"] for m in evals] or \
        [m["eval_cer"] for m in noisy] != [m["eval_cer"] for m in evals]  # another set, other scores

    # the best checkpoint is the noisy set's best (lowest WER, then CER), as the log says
    best = min(noisy, key=lambda m: (m["eval_wer"], m["eval_cer"], m["step"]))
    assert f"Shipping the best weights (step {best['step']}, eval[noisy] WER {best['eval_wer']:.4f}" in caplog.text

    # the log lines SageMaker parses: one definition per set and score, matching its own line only
    log = caplog.text
    definitions = dict(metric_definitions(cfg))
    found = [float(v) for v in re.findall(definitions["eval_noisy_wer"], log)]
    assert found == [m["eval_wer"] for m in noisy]
    assert [float(v) for v in re.findall(definitions["eval_wer"], log)] == [m["eval_wer"] for m in evals]

    # the tracker has the set's scores under their own names
    events = EventAccumulator(str(run_dir / "tensorboard" / "tiny-run"))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("eval_noisy_cer")] == \
        [(m["step"], round(m["eval_cer"], 5)) for m in noisy]

    # curves.png draws it, report.html lists the shipped model's score on it: evaluate.py's score of model/
    assert "also on the evaluation sets noisy" in Image.open(run_dir / "curves.png").info["Description"]
    scored = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_en_shifted",
                                               *SMALL_DEMO, "split=test_noisy", "hw=cpu",
                                               f"run_dir={tmp_path / 'eval'}"]))
    page = (run_dir / "report.html").read_text()
    row = re.search(r"<tr><td>noisy</td><td class='n'>6</td><td class='n'>([\d.]+)</td><td class='n'>([\d.]+)</td>",
                    page)
    assert row and (float(row.group(1)), float(row.group(2))) == (round(scored.metrics["eval_wer"], 4),
                                                                   round(scored.metrics["eval_cer"], 4))
