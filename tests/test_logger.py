"""logger=wandb in offline mode: a real run written to disk, read back record by record."""

import json
import struct
import time

import pytest

from conftest import SMALL_DEMO, TINY, compose, jiwer_wer
from speechkit.commands import train

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)


def read_wandb_records(path):
    """Records of a .wandb transaction log (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def complete_wandb_records(path, timeout_s=60):
    """The records once the run's `exit` record is on disk: wandb's service process may still be flushing the
    file after `finish()` has returned."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = list(read_wandb_records(path))
        except DecodeError:  # a record caught half-written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_run_holds_config_and_eval_wer(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "local-secret-key-0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret_token_value")
    run_dir = tmp_path / "run"
    cfg = compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, "logger=wandb", "logger.tags=[ci,tiny]",
                            "logger.name=tiny-offline", "trainer.max_steps=2", "trainer.eval_steps=1",
                            "trainer.logging_steps=1", "trainer.batch_size=4", "trainer.progress_bar=false",
                            f"run_dir={run_dir}"])
    wer = train.run(cfg)

    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history, config, run = [], {}, None
    for record in complete_wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            run = record.run
    assert run.project == "speechkit" and run.display_name == "tiny-offline" and list(run.tags) == ["ci", "tiny"]
    evals = [h for h in history if "eval_wer" in h]
    assert [h["_step"] for h in evals] == [1, 2]
    assert all("eval_cer" in h and "eval_loss" in h for h in evals)
    assert any("train_loss" in h for h in history)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert evals[-1]["eval_wer"] == [m for m in metrics if m["kind"] == "eval"][-1]["eval_wer"]
    assert wer == pytest.approx(jiwer_wer(run_dir))  # the shipped model's final eval, by jiwer from its predictions
    assert config["trainer"]["learning_rate"] == cfg.trainer.learning_rate and config["logger"]["backend"] == "wandb"

    # no secret in anything saved or logged
    for path in [*run_dir.rglob("*")]:
        if path.is_file():
            blob = path.read_bytes()
            assert b"local-secret-key" not in blob and b"hf_supersecret" not in blob, path


def test_secret_looking_keys_and_values_are_redacted():
    from omegaconf import OmegaConf
    from speechkit.config import public_config, redact, redact_override

    cfg = OmegaConf.create({"a": {"hf_token": "hf_x", "api_key": "k", "ok": 1, "token_count": None,
                                  "uri": "https://bob:pw@mlflow.example.com/x", "path": "s3://bucket/key"}})
    assert public_config(cfg) == {"a": {"hf_token": "<redacted>", "api_key": "<redacted>", "ok": 1,
                                        "token_count": None, "uri": "https://<redacted>@mlflow.example.com/x",
                                        "path": "s3://bucket/key"}}
    secrets = ["https://bob:pw@host/x", "https://ghp0123token@github.com/a/b", "hf_abcdefghijklmnopqrstuvwxyz012345",
               "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
    assert [redact(s) for s in secrets] == ["https://<redacted>@host/x", "https://<redacted>@github.com/a/b",
                                            "<redacted>", "<redacted>", "<redacted>"]
    kept = ["s3://bucket/key", "git@github.com:a/b.git", "openai/whisper-large-v3-turbo", "outputs/train/2026-11-22",
            "LibriSpeech/train/clean100/Speaker123456", "0123456789abcdef0123456789abcdef01234567",  # a git sha
            "/data/LibriSpeech/Train/Clean100/Spkr123", "hf_short"]
    assert [redact(s) for s in kept] == kept
    assert redact_override("+x.password=hunter2") == "+x.password=<redacted>"
    assert redact_override("task.decoder.max_new_tokens=80") == "task.decoder.max_new_tokens=80"  # not a token
    assert public_config(OmegaConf.create({"max_new_tokens": 80, "tokenizer": "x"})) == {"max_new_tokens": 80,
                                                                                        "tokenizer": "x"}
    assert redact_override("model.name_or_path=facebook/wav2vec2-base") == "model.name_or_path=facebook/wav2vec2-base"


def test_secrets_typed_on_the_command_line_reach_no_file_of_the_run(asr_demo_run):
    """The demo run was typed with URL credentials and a Hub token (conftest.TYPED_SECRETS): config.yaml keeps the
    host, Hydra's own copies (.hydra/) and the model card's command line keep the keys, none keeps the secrets."""
    from conftest import TYPED_SECRETS

    run_dir, _ = asr_demo_run
    config = (run_dir / "config.yaml").read_text()
    assert "tracking_uri: https://<redacted>@mlflow.example.com/api" in config and "entity: <redacted>" in config
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "- logger.tracking_uri=https://<redacted>@mlflow.example.com/api" in overrides
    assert "- logger.entity=<redacted>" in overrides
    assert "logger.entity=<redacted>" in (run_dir / "model" / "README.md").read_text()
    for secret in ("S3cr3t-pw", TYPED_SECRETS[1].split("=")[1]):
        assert secret in " ".join(TYPED_SECRETS)
        for path in run_dir.rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def _tracked_run(tmp_path, backend):
    run_dir = tmp_path / "run"
    cfg = compose("train", ["experiment=demo", *SMALL_DEMO, *TINY, f"logger={backend}", "logger.name=tiny-run",
                            "trainer.max_steps=2", "trainer.eval_steps=1", "trainer.logging_steps=1",
                            "trainer.batch_size=4", "trainer.progress_bar=false", f"run_dir={run_dir}"])
    train.run(cfg)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, cfg, metrics


def test_tensorboard_run_holds_hparams_and_every_logged_value(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, cfg, metrics = _tracked_run(tmp_path, "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard" / "tiny-run"))
    events.Reload()
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("eval_wer")] == \
        [(m["step"], round(m["eval_wer"], 5)) for m in evals]
    trains = [m for m in metrics if m["kind"] == "train"]
    assert [e.step for e in events.Scalars("train_loss")] == [m["step"] for m in trains]
    hparams = list((run_dir / "tensorboard" / "tiny-run").rglob("events.out.tfevents.*"))
    assert hparams and any(b"trainer.learning_rate" in p.read_bytes() for p in hparams)  # the flattened config


def test_mlflow_run_in_the_local_store_holds_params_and_metrics(tmp_path):
    import mlflow

    run_dir, cfg, metrics = _tracked_run(tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("speechkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert float(run.data.params["trainer.learning_rate"]) == cfg.trainer.learning_rate
    assert run.data.params["task.name"] == "asr"
    evals = [m for m in metrics if m["kind"] == "eval"]
    history = client.get_metric_history(run.info.run_id, "eval_wer")
    assert [(h.step, round(h.value, 5)) for h in history] == [(m["step"], round(m["eval_wer"], 5)) for m in evals]
