"""SageMaker, offline: a real moto server on 127.0.0.1 stands in for AWS; the real SageMaker SDK 3 talks to it.

One chain of real runs, each feeding the next: `train.py ... hw=sagemaker` submits a job (what the emulator recorded is
checked); the job's own code and data channel, downloaded back from the emulator's S3, run through the container entry
point in a subprocess with a fake SM_* environment (a tiny model trains and lands in SM_MODEL_DIR); the job's metric
regexes are applied to that run's log; `deploy.py` packs and deploys that model against the emulator; the handler
transcribes with it in process; and `serve.py` serves it over HTTP to a real client.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, SMALL_DEMO, TINY, compose, free_port, run_cli, speak, wait_http

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)

ROLE = "arn:aws:iam::123456789012:role/SpeechkitSageMakerRole"
BUCKET = "speechkit-test-bucket"
REGION = "us-east-1"
TRAIN_IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
               "2.9.0-transformers5.3.0-gpu-py312-cu130-ubuntu22.04")
INFER_IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:"
               "2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04")
OVERRIDES = ["experiment=demo", *SMALL_DEMO, *TINY, "trainer.max_steps=3", "trainer.batch_size=4",
             "trainer.eval_batch_size=4", "trainer.warmup_steps=1", "trainer.logging_steps=1", "trainer.eval_steps=2",
             "trainer.progress_bar=false", "trainer.learning_rate=1e-6",  # near random init: non-empty noise text
             "hw=sagemaker", f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}", f"sagemaker.region={REGION}",
             "sagemaker.container_hw=cpu"]  # the container here has no GPU


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """moto's server on 127.0.0.1, recording every request; the SDK pointed at it with fake credentials."""
    home = tmp_path_factory.mktemp("aws")
    recording = home / "recording.jsonl"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MOTO_ENABLE_RECORDING": "true",
                                   "MOTO_RECORDER_FILEPATH": str(recording)})
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "SAGEMAKER_VALIDATE_ROLE": "false",
           "SAGEMAKER_TELEMETRY_OPT_OUT": "true", "AWS_CONFIG_FILE": str(home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", server)
        import boto3

        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield {"recording": recording}
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def client(service: str):
    import boto3

    return boto3.client(service, region_name=REGION)


def created_job(recording: Path, name: str) -> dict:
    """The CreateTrainingJob request for job `name`, as the emulator received it (moto's describe does not echo
    metric definitions back)."""
    (request,) = [r for r in recorded(recording, "SageMaker.CreateTrainingJob") if r["TrainingJobName"] == name]
    return request


def recorded(recording: Path, target: str) -> list:
    """The JSON bodies of the AWS API calls `target` (e.g. SageMaker.CreateTrainingJob) the emulator received."""
    bodies = []
    for line in recording.read_text().splitlines():
        entry = json.loads(line)
        if entry["headers"].get("X-Amz-Target") == target:
            body = base64.b64decode(entry["body"]) if entry["body_encoded"] else entry["body"]
            bodies.append(json.loads(body))
    return bodies


def download(prefix_uri: str, into: Path) -> Path:
    """Every object under an s3:// prefix, laid out as SageMaker lays a channel out in the container."""
    bucket, prefix = prefix_uri[len("s3://"):].split("/", 1)
    s3 = client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            target = into / obj["Key"][len(prefix.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
    return into


@pytest.fixture(scope="module")
def launched(aws, tmp_path_factory):
    """`python train.py experiment=demo ... hw=sagemaker ...`, as a user types it."""
    run_dir = tmp_path_factory.mktemp("launch")
    done = run_cli("train.py", *OVERRIDES, f"hydra.run.dir={run_dir}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    job_name = re.search(r"SageMaker training job: (\S+)", done.stdout).group(1)
    job = client("sagemaker").describe_training_job(TrainingJobName=job_name)
    return {"done": done, "job": job, "run_dir": run_dir, "aws": aws}


def test_a_secret_typed_for_a_job_is_refused_before_anything_is_sent(aws, tmp_path):
    """A job's hyperparameters (the typed overrides) are readable by whoever may describe it: a value shaped like a
    credential is refused in one line naming its key, and no job is created."""
    done = run_cli("train.py", *OVERRIDES, "logger.tracking_uri=https://bob:S3cr3t@mlflow.example.com",
                   "sagemaker.base_job_name=typed-secret", f"hydra.run.dir={tmp_path / 'r'}", timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("speechkit: config error: logger.tracking_uri: its value holds a secret")
    assert not any(r["TrainingJobName"].startswith("typed-secret")
                   for r in recorded(aws["recording"], "SageMaker.CreateTrainingJob"))
    assert not (tmp_path / "r" / "sagemaker_job.json").exists()
    assert all(b"S3cr3t" not in p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file())


def test_no_token_from_the_environment_reaches_the_job(aws, tmp_path):
    """A Hub token and a wandb key in the environment that submits the job appear in none of its hyperparameters,
    its environment, or anything uploaded for it."""
    secrets = {"HF_TOKEN": "hf_FAKE_token_0f9e8d7c6b5a", "WANDB_API_KEY": "FAKE_wandb_key_1a2b3c4d5e6f7a8b9c0d"}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *OVERRIDES, f"hydra.run.dir={tmp_path / 'r'}",
                           "sagemaker.base_job_name=secrets-check"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **secrets, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    name = re.search(r"SageMaker training job: (\S+)", done.stdout).group(1)
    request = created_job(aws["recording"], name)
    blob = json.dumps(request)
    assert request["HyperParameters"] and all(v not in blob for v in secrets.values())
    bucket = client("s3")
    uploaded = bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert any("secrets-check" in o["Key"] for o in uploaded), [o["Key"] for o in uploaded]  # this job's code
    for obj in uploaded:
        body = bucket.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        payloads = [body]
        if obj["Key"].endswith(".tar.gz"):  # the uploaded code: every file in it
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                payloads += [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
        assert all(v.encode() not in p for p in payloads for v in secrets.values()), obj["Key"]
    assert all(v not in done.stdout + done.stderr for v in secrets.values())
    for path in (tmp_path / "r").rglob("*"):
        if path.is_file():
            assert all(v.encode() not in path.read_bytes() for v in secrets.values()), path


def test_launch_submits_the_job_the_config_describes(launched):
    job = launched["job"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE  # looked up from hw.*_version
    assert job["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge" and job["ResourceConfig"]["InstanceCount"] == 1
    assert job["RoleArn"] == ROLE
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 86400
    assert job["EnableManagedSpotTraining"] is False
    # The overrides, exactly as typed, travel as one hyperparameter.
    assert json.loads(job["HyperParameters"]["overrides"]) == OVERRIDES
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert set(channels) == {"dataset", "code", "sm_drivers"}
    assert all(uri.startswith(f"s3://{BUCKET}/speechkit/") for uri in channels.values())
    record = json.loads((launched["run_dir"] / "sagemaker_job.json").read_text())
    assert record["job_name"] == job["TrainingJobName"] and record["distribution"] == "none"

    s3 = client("s3")
    def keys(uri):
        prefix = uri[len(f"s3://{BUCKET}/"):] + "/"
        return {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}

    code = keys(channels["code"])
    for name in ("speechkit/sagemaker/entry.py", "speechkit/training/trainer.py", "conf/train.yaml",
                 "conf/hw/sagemaker.yaml", "train.py", "requirements.txt", "pyproject.toml"):
        assert name in code, name
    assert not any("__pycache__" in k for k in code)
    reqs = s3.get_object(Bucket=BUCKET, Key=channels["code"][len(f"s3://{BUCKET}/"):] + "/requirements.txt")
    reqs = reqs["Body"].read().decode()
    assert "torch==2.13.0" in reqs and "transformers==5.23.0" in reqs and "hydra-core==1.3.8" in reqs
    # The synthesized demo corpus, uploaded under its cache folder name: 24 train + 6 test clips and their csvs.
    data = keys(channels["dataset"])
    folders = {k.split("/")[0] for k in data}
    assert len(folders) == 1 and folders.pop().startswith("demo_en-")
    assert sum(k.endswith(".wav") for k in data) == 30
    assert {k.split("/", 1)[1] for k in data if k.endswith("metadata.csv")} == {"train/metadata.csv",
                                                                              "test/metadata.csv"}


def test_launch_sends_metric_definitions_for_every_logged_value(launched):
    request = created_job(launched["aws"]["recording"], launched["job"]["TrainingJobName"])
    definitions = {d["Name"]: d["Regex"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert set(definitions) == {"train_loss", "learning_rate", "epoch", "train_audio_s_per_s", "eval_loss",
                                "eval_wer", "eval_cer"}
    assert request["HyperParameters"]["overrides"] == json.dumps(OVERRIDES)


def test_launch_errors_name_the_key(aws, tmp_path):
    done = run_cli("train.py", "experiment=demo", "hw=sagemaker", f"sagemaker.bucket={BUCKET}",
                   f"hydra.run.dir={tmp_path / 'refused'}")
    assert done.returncode == 2 and "sagemaker.role" in done.stderr and "Traceback" not in done.stderr
    from conftest import compose
    from speechkit.config import ConfigError
    from speechkit.sagemaker.launch import launch

    with pytest.raises(ConfigError, match=r"sagemaker\.bucket"):
        launch(compose("train", ["experiment=demo", "hw=sagemaker", f"sagemaker.role={ROLE}", "run_dir=/tmp/x"]), [])
    with pytest.raises(ConfigError, match=r"dataset\.path: /no/such/folder is not a local directory"):
        launch(compose("train", ["dataset=audiofolder", "dataset.path=/no/such/folder", "hw=sagemaker",
                                 f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}", "run_dir=/tmp/x"]), [])
    with pytest.raises(ConfigError, match=r"sagemaker\.distribution=none"):
        launch(compose("train", ["experiment=demo", "hw=sagemaker", f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}",
                                 "sagemaker.distribution=none", "sagemaker.instance_count=2", "run_dir=/tmp/x"]), [])


def test_distribution_and_spot_follow_the_config(aws, tmp_path):
    """Two 8-GPU instances with spot: torchrun, spot training, checkpoints to S3, the wait limit."""
    from conftest import compose
    from speechkit.sagemaker.launch import launch

    cfg = compose("train", ["experiment=demo", *SMALL_DEMO, "hw=sagemaker", f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}",
                            "sagemaker.instance_type=ml.p3.16xlarge", "sagemaker.instance_count=2", "sagemaker.spot=true",
                            "sagemaker.max_run_s=3600", f"run_dir={tmp_path}"])
    job = client("sagemaker").describe_training_job(TrainingJobName=launch(cfg, ["sagemaker.spot=true"]))
    assert job["ResourceConfig"] == {"InstanceType": "ml.p3.16xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert job["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/speechkit/speechkit/checkpoints/")
    assert json.loads((tmp_path / "sagemaker_job.json").read_text())["distribution"] == "torchrun"
    s3 = client("s3")
    code = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"] if c["ChannelName"] == "sm_drivers"]
    key = code[0][len(f"s3://{BUCKET}/"):] + "/distributed.json"
    assert "process_count_per_node" in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


@pytest.fixture(scope="module")
def container_run(launched, tmp_path_factory):
    """The job as the container runs it: its code and data channel from S3, SM_* paths, no espeak-ng on PATH."""
    root = tmp_path_factory.mktemp("container")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in launched["job"]["InputDataConfig"]}
    code = download(channels["code"], root / "input" / "data" / "code")
    data = download(channels["dataset"], root / "input" / "data" / "dataset")
    env = {**os.environ, "SM_MODEL_DIR": str(root / "model"), "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
           "SM_CHANNEL_DATASET": str(data), "SM_NUM_GPUS": "0", "SPEECHKIT_RUN_DIR": str(root / "checkpoints"),
           "PATH": os.path.dirname(sys.executable), "PYTHONUNBUFFERED": "1"}
    hps = launched["job"]["HyperParameters"]
    # As SageMaker's basic script driver runs it: `python <entry_script> --overrides <value>` from the code dir.
    done = subprocess.run([sys.executable, "speechkit/sagemaker/entry.py", "--overrides", hps["overrides"]],
                          cwd=code, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"root": root, "code": code, "data": data, "done": done, "model": root / "model"}


def test_container_entry_trains_and_writes_a_loadable_model(container_run):
    root, done = container_run["root"], container_run["done"]
    assert f"speechkit from {container_run['code']}" in done.stdout  # the shipped code ran, not this checkout
    from omegaconf import OmegaConf
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    model = Wav2Vec2ForCTC.from_pretrained(container_run["model"])
    processor = Wav2Vec2Processor.from_pretrained(container_run["model"])
    assert model.config.hidden_size == 32 and processor.tokenizer.get_vocab()
    cfg = OmegaConf.load(root / "output" / "data" / "config.yaml")
    assert cfg.hw.backend == "cpu" and cfg.dataset.demo.cache_dir == str(container_run["data"])
    assert cfg.trainer.max_steps == 3 and cfg.model.architecture.hidden_size == 32
    for name in ("metrics.jsonl", "drop_report.jsonl", "train.log", "vocab.json"):
        assert (root / "output" / "data" / name).is_file(), name


def test_metric_regexes_match_the_trainers_log_lines(launched, container_run):
    request = created_job(launched["aws"]["recording"], launched["job"]["TrainingJobName"])
    log = container_run["done"].stdout
    metrics = [json.loads(x) for x in (container_run["root"] / "output" / "data" / "metrics.jsonl").read_text()
               .splitlines()]
    last_train = [m for m in metrics if m["kind"] == "train"][-1]
    first_eval = [m for m in metrics if m["kind"] == "eval"][0]
    expected = {"train_loss": last_train["loss"], "learning_rate": last_train["learning_rate"],
                "epoch": last_train["epoch"], "train_audio_s_per_s": last_train["audio_s_per_s"],
                "eval_loss": first_eval["eval_loss"],
                "eval_wer": first_eval["eval_wer"], "eval_cer": first_eval["eval_cer"]}
    for definition in request["AlgorithmSpecification"]["MetricDefinitions"]:
        values = [float(m.group(1)) for line in log.splitlines() if (m := re.search(definition["Regex"], line))]
        assert values, f"{definition['Name']}: {definition['Regex']} matches no log line"
        kind = "eval" if definition["Name"].startswith("eval") else "train"
        assert len(values) == sum(m["kind"] == kind for m in metrics), definition["Name"]
        value = values[-1] if kind == "train" else values[0]
        assert value == pytest.approx(expected[definition["Name"]], rel=1e-2, abs=1e-3), definition["Name"]


def test_deploy_packs_uploads_and_creates_the_endpoint(container_run, tmp_path):
    from speechkit.inference.bundle import bundle

    done = run_cli("deploy.py", f"model_dir={container_run['model']}", f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}",
                   f"sagemaker.region={REGION}", "endpoint.name=speechkit-test", f"hydra.run.dir={tmp_path}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "speechkit-test" in done.stdout and "invoke-endpoint" in done.stdout and "delete-endpoint" in done.stdout
    sm = client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="speechkit-test")
    assert endpoint["EndpointConfigName"] == "speechkit-test"
    (variant,) = sm.describe_endpoint_config(EndpointConfigName="speechkit-test")["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 1
    assert variant["ModelName"] == "speechkit-test"
    model = sm.describe_model(ModelName="speechkit-test")
    assert model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert container["Image"] == INFER_IMAGE
    assert container["Environment"]["SPEECHKIT_MAX_BODY_MB"] == "6.0"
    url = container["ModelDataUrl"]
    assert url == f"s3://{BUCKET}/speechkit/models/speechkit-test/model.tar.gz"
    body = client("s3").get_object(Bucket=BUCKET, Key=url[len(f"s3://{BUCKET}/"):])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = set(tar.getnames())
        handler = tar.extractfile("code/inference.py").read()
        requirements = tar.extractfile("code/requirements.txt").read().decode().split()
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json", "code/inference.py",
            "code/requirements.txt"} <= names
    assert {n for n in names if "/" in n} == {"code/inference.py", "code/requirements.txt"}
    assert handler == bundle().encode()  # speechkit/inference/ as one file
    assert requirements == ["torch==2.13.0", "torchcodec==0.13.0", "transformers==5.23.0", "numpy>=1.26"]


# ------------------------------------------------------------------------------------------- the handler
@pytest.fixture(scope="module")
def handler(container_run):
    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    return inference, inference.model_fn(str(container_run["model"]))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Real speech (espeak-ng, 22.05 kHz), and the same audio at 16 kHz as the model hears it."""
    from speechkit.data.audio import decode

    path = speak("the quick brown fox jumps over the lazy dog", tmp_path_factory.mktemp("clip") / "fox.wav")
    return path, decode(str(path), 16000)


@pytest.fixture(scope="module")
def stock(container_run):
    """The stock transformers pipeline on the shipped model folder: what the handler's answers are checked against
    (not the handler's own pipeline object)."""
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(container_run["model"]), device="cpu")


def test_handler_json_request(handler, clip, stock):
    inference, model = handler
    _, at_16k = clip
    body = json.dumps({"speech_array": at_16k.tolist(), "sampling_rate": 16000})
    out = json.loads(inference.transform(body, "application/json", "application/json", model))
    direct = stock({"raw": at_16k, "sampling_rate": 16000})["text"]
    assert out["text"] == direct and out["text"]  # a near-random model still spells something
    assert out["duration_s"] == pytest.approx(at_16k.size / 16000, abs=1e-3) and out["chunked"] is False


def test_handler_can_answer_the_bare_transcript_as_the_aws_recipe_did(handler, clip, stock, monkeypatch):
    from omegaconf import OmegaConf

    from speechkit.inference.server import settings_env

    inference, model = handler
    _, at_16k = clip
    body = json.dumps({"speech_array": at_16k.tolist(), "sampling_rate": 16000})
    shaped = compose("serve", ["model_dir=x", "inference.response=transcript"]).inference
    env = settings_env(OmegaConf.to_object(shaped))
    assert env["SPEECHKIT_RESPONSE"] == "transcript"
    monkeypatch.setenv("SPEECHKIT_RESPONSE", env["SPEECHKIT_RESPONSE"])
    answer = json.loads(inference.transform(body, "application/json", "application/json", model))
    assert answer == stock({"raw": at_16k, "sampling_rate": 16000})["text"]  # a JSON string


def test_handler_wav_and_flac_bytes_are_resampled(handler, clip, stock, tmp_path):
    inference, model = handler
    path, at_16k = clip
    out = json.loads(inference.transform(path.read_bytes(), "audio/wav", None, model))
    assert out["text"] == stock({"raw": at_16k, "sampling_rate": 16000})["text"]
    assert out["duration_s"] == pytest.approx(at_16k.size / 16000, abs=2e-3)
    # FLAC at 44.1 kHz: decoded, resampled to 16 kHz, same duration.
    audio, rate = sf.read(path, dtype="float32")
    n = int(round(audio.size * 44100 / rate))
    flac = tmp_path / "fox.flac"
    sf.write(flac, np.interp(np.arange(n) * rate / 44100, np.arange(audio.size), audio).astype(np.float32), 44100)
    clip_in = inference.input_fn(flac.read_bytes(), "audio/flac")
    assert clip_in["sampling_rate"] == 44100
    out = json.loads(inference.output_fn(inference.predict_fn(clip_in, model), "application/json"))
    assert out["duration_s"] == pytest.approx(audio.size / rate, abs=2e-3) and isinstance(out["text"], str)
    assert json.loads(inference.transform(flac.read_bytes(), "audio/x-audio", "*/*", model))["text"] == out["text"]


def test_handler_transcribes_long_audio_in_overlapping_chunks(handler, clip, stock, monkeypatch):
    inference, model = handler
    _, at_16k = clip
    long = np.concatenate([at_16k] * 3)  # ~7 s
    monkeypatch.setenv("SPEECHKIT_CHUNK_LENGTH_S", "2")
    monkeypatch.setenv("SPEECHKIT_STRIDE_LENGTH_S", "0.5")
    calls = []
    hook = model["model"].register_forward_hook(lambda *a: calls.append(1))
    try:
        out = inference.predict_fn({"array": long, "sampling_rate": 16000}, model)
    finally:
        hook.remove()
    assert out["chunked"] is True and len(calls) >= 4  # one forward pass per ~1 s of new audio per chunk
    assert out["text"] == stock({"raw": long, "sampling_rate": 16000}, chunk_length_s=2.0, stride_length_s=0.5)["text"]


@pytest.mark.parametrize("body,content_type,status,words", [
    (b"hello", "text/plain", 415, "unsupported content type"),
    (b"{\"speech_array\": [0.1, ", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "must be an object"),
    (b"{\"speech_array\": [0.1, 0.2]}", "application/json", 400, "sampling_rate"),
    (b"{\"sampling_rate\": 16000}", "application/json", 400, "speech_array"),
    (b"{\"speech_array\": [], \"sampling_rate\": 16000}", "application/json", 400, "empty audio"),
    (b"{\"speech_array\": [[0.1], [0.2]], \"sampling_rate\": 16000}", "application/json", 400, "numbers only"),
    (b"{\"speech_array\": [0.1, NaN], \"sampling_rate\": 16000}", "application/json", 400, "NaN"),
    (b"{\"speech_array\": [0.1, 1e39], \"sampling_rate\": 16000}", "application/json", 400, "NaN or infinite"),
    (b"{\"speech_array\": [0.1, " + b"9" * 400 + b"], \"sampling_rate\": 16000}", "application/json", 400,
     "too large"),
    (b"{\"speech_array\": [0.1], \"sampling_rate\": NaN}", "application/json", 400, "NaN is not a JSON number"),
    (b"{\"speech_array\": [0.1], \"sampling_rate\": Infinity}", "application/json", 400, "Infinity"),
    (b"{\"speech_array\": [0.1], \"sampling_rate\": " + b"1" * 5000 + b"}", "application/json", 400,
     "malformed JSON"),
    (b"[" * 5000 + b"]" * 5000, "application/json", 400, "nested too deeply"),
    (b"{\"speech_array\": [0.1], \"sampling_rate\": \"fast\"}", "application/json", 400, "sampling_rate"),
    (b"", "audio/wav", 400, "empty"),
    (b"this is certainly not a wav file" * 20, "audio/wav", 400, "not audio"),
    (b"\0" * (7 * 1024 * 1024), "audio/wav", 413, "over the limit"),
])
def test_handler_refuses_with_a_clear_error(handler, body, content_type, status, words):
    inference, model = handler
    with pytest.raises(inference.InferenceError) as err:
        inference.transform(body, content_type, "application/json", model)
    assert err.value.status_code == status and words in str(err.value)


def test_audio_over_max_audio_s_is_refused_from_its_count_or_header_before_decoding(handler, clip, monkeypatch):
    """A small body can hold hours: JSON at a low rate, or compressed audio. 300 s by default."""
    import torch
    from torchcodec.encoders import AudioEncoder

    inference, model = handler
    low_rate = json.dumps({"speech_array": [0.0] * 301_000, "sampling_rate": 1000}).encode()  # 1.5 MB, 301 s
    flac = AudioEncoder(torch.zeros(1, 8000 * 600), sample_rate=8000).to_tensor("flac").numpy().tobytes()
    assert len(low_rate) < inference.max_body_bytes() and len(flac) < 200_000  # ten minutes in 120 KB
    for body, kind, said in ((low_rate, "application/json", "audio of at least 301.0 s"),  # counted before parsing
                             (flac, "audio/flac", "audio of 600.0 s")):  # from the header
        with pytest.raises(inference.InferenceError) as err:
            inference.transform(body, kind, "application/json", model)
        assert err.value.status_code == 413 and said in err.value.message
        assert "over the limit of 300 s (SPEECHKIT_MAX_AUDIO_S / inference.max_audio_s)" in err.value.message
    path, at_16k = clip  # 2.9 s of speech: within the default, over a limit of 2 s
    assert json.loads(inference.transform(path.read_bytes(), "audio/wav", "application/json", model))["text"]
    monkeypatch.setenv("SPEECHKIT_MAX_AUDIO_S", "2")
    with pytest.raises(inference.InferenceError, match="over the limit of 2 s"):
        inference.transform(path.read_bytes(), "audio/wav", "application/json", model)
    small = json.dumps({"speech_array": [0.0] * 40000, "sampling_rate": 16000}).encode()  # parsed, then counted
    with pytest.raises(inference.InferenceError, match=r"^audio of 2\.5 s is over the limit of 2 s"):
        inference.input_fn(small, "application/json")
    monkeypatch.setenv("SPEECHKIT_MAX_AUDIO_S", "none")  # no limit
    assert inference.input_fn(low_rate, "application/json")["array"].size == 301_000


def test_handler_refuses_a_header_only_wav_and_an_unknown_accept(handler, tmp_path):
    inference, model = handler
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(inference.InferenceError, match="empty audio"):
        inference.input_fn((tmp_path / "empty.wav").read_bytes(), "audio/wav")
    with pytest.raises(inference.InferenceError) as err:
        inference.output_fn({"text": "x"}, "text/csv")
    assert err.value.status_code == 406


def test_handler_never_unpickles_or_trusts_remote_code():
    """No pickle-capable loader, no eval, no remote code in the handler's code (its docstrings may say so)."""
    import ast

    from speechkit.inference.bundle import bundle

    tree = ast.parse(bundle())  # code/inference.py as shipped
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle", "speechkit"}
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"eval", "exec", "torch.load", "np.load", "numpy.load"}
    keywords = {(k.arg, ast.unparse(k.value)) for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert not any(arg in ("trust_remote_code", "allow_pickle") for arg, _ in keywords)
    assert ("use_safetensors", "True") in keywords and ("local_files_only", "True") in keywords


# ------------------------------------------------------------------------------------------ local server
@pytest.fixture(scope="module")
def served(container_run):
    """`python serve.py` on a free local port, with a 1 MB body limit, a 2 s read timeout, one inference thread
    and room for one more request in its queue."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "serve.py"), f"model_dir={container_run['model']}",
                               f"port={port}", "inference.max_body_mb=1", "inference.read_timeout_s=2",
                               "inference.threads=1", "inference.queue=1"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ping", server, seconds=120)
        yield {"base": base, "port": port, "server": server, "model": container_run["model"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_answers_ping_and_invocations_over_http(served, clip):
    base, port = served["base"], served["port"]

    def post(body: bytes, content_type: str):
        request = urllib.request.Request(f"{base}/invocations", data=body, method="POST",
                                         headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    path, at_16k = clip
    status, out = post(path.read_bytes(), "audio/wav")
    assert status == 200 and out["text"] and out["duration_s"] == pytest.approx(at_16k.size / 16000, abs=2e-3)
    status, same = post(json.dumps({"speech_array": at_16k.tolist()[:16000], "sampling_rate": 16000}).encode(),
                        "application/json")
    assert status == 200 and isinstance(same["text"], str)
    status, err = post(b"hello", "text/plain")
    assert status == 415 and "unsupported content type" in err["error"]
    # A body over inference.max_body_mb (1 MB here) is refused from its Content-Length, before it is read.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "audio/wav")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    conn.close()
    status, err = post(b"{\"sampling_rate\": 16000}", "application/json")
    assert status == 400 and "speech_array" in err["error"]
    status, err = post(json.dumps({"speech_array": [0.1] * 100, "sampling_rate": 16000}).encode(), "application/json")
    # model=tiny's convolutions (kernels 10, 8, 4, 4; strides 5, 4, 4, 4) see 10 + 7*5 + 3*20 + 3*80 = 345 samples:
    # the model itself makes one frame of 345 and cannot take 344.
    import torch
    from transformers import AutoModelForCTC

    ctc = AutoModelForCTC.from_pretrained(served["model"]).eval()
    with torch.no_grad():
        assert ctc(torch.zeros(1, 345)).logits.shape[1] == 1
        with pytest.raises(RuntimeError):
            ctc(torch.zeros(1, 344))
    assert status == 400 and "shorter than the model's receptive field (345 samples, 22 ms)" in err["error"]


def test_random_bytes_under_every_content_type_never_get_a_500(served):
    """A bounded fuzz: 6 random bodies (empty to 4 KB) under each accepted content type; every answer is a 4xx (or
    a 200 when FFmpeg finds audio in the noise), never a 5xx, and the server is still up afterwards."""
    from conftest import shipped_handler
    inference = shipped_handler()  # code/inference.py as deploy.py ships it

    rng = np.random.default_rng(7)
    seen = []
    for content_type in inference.JSON_TYPES + inference.AUDIO_TYPES:
        for size in (0, 1, 44, 300, 1000, 4096):
            body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            request = urllib.request.Request(f"{served['base']}/invocations", data=body, method="POST",
                                             headers={"Content-Type": content_type})
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    status = r.status
            except urllib.error.HTTPError as err:
                status = err.code
                assert "error" in json.loads(err.read())  # a message, not a stack trace
            seen.append((content_type, size, status))
    assert all(status == 200 or 400 <= status < 500 for _, _, status in seen), seen
    assert sum(400 <= s < 500 for _, _, s in seen) >= len(seen) // 2
    assert urllib.request.urlopen(f"{served['base']}/ping", timeout=10).status == 200


def test_a_slow_sender_is_timed_out(served):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=30)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "audio/wav")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    conn.send(b"RIFF")  # then nothing: 996 bytes never come
    began = time.time()
    response = conn.getresponse()
    assert response.status == 408 and "not received within 2 s" in json.loads(response.read())["error"]
    assert time.time() - began < 20
    conn.close()
    assert urllib.request.urlopen(f"{served['base']}/ping", timeout=10).status == 200


def test_a_full_queue_is_answered_503_with_retry_after(served):
    """Four requests of 290 s of audio at once (about a second of work each here, 62 KB of FLAC each): one is
    transcribed, one waits, two are told when to come back; the queue then serves again."""
    import concurrent.futures

    import torch
    from torchcodec.encoders import AudioEncoder

    flac = AudioEncoder(torch.zeros(1, 16000 * 290), sample_rate=16000).to_tensor("flac").numpy().tobytes()

    def post(_):
        request = urllib.request.Request(f"{served['base']}/invocations", data=flac, method="POST",
                                         headers={"Content-Type": "audio/flac"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, None, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Retry-After"), json.loads(err.read())

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = sorted(pool.map(post, range(4)), key=lambda a: a[0])
    assert [a[0] for a in answers] == [200, 200, 503, 503], answers
    for _, retry, body in answers[2:]:
        assert retry.isdigit() and int(retry) >= 1
        assert body["error"] == f"busy: 1 requests are waiting (inference.queue); retry in {retry} s"
    assert post(0)[0] == 200  # nothing stuck: the queue emptied


def test_load_benchmark_runs_and_reports(container_run, clip, tmp_path):
    """benchmarks/serve_load.py on a tiny budget (3 clients x 3 requests): every request answered, figures written;
    no timing is asserted."""
    path, _ = clip
    done = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--model-dir", str(container_run["model"]),
                           "--audio", str(path), "--clients", "3", "--requests", "3", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "serve-load.json").read_text())
    assert summary["requests"] == 9 and summary["statuses"] == {"200": 9} and summary["errors"] == 0
    assert summary["server_alive"] and 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["max"]
    assert summary["server_rss_mb"]["after"] > 0 and "requests/s" in (tmp_path / "serve-load.md").read_text()


def test_a_job_installs_the_extras_its_config_needs():
    from omegaconf import OmegaConf

    from speechkit.sagemaker.launch import job_extras, requirements

    with_lm = OmegaConf.to_object(compose("train", ["task.decoder.type=kenlm", "run_dir=/x"]))
    diarizer = OmegaConf.to_object(compose("train", ["task=diarization", "run_dir=/x"]))
    assert job_extras(with_lm) == ["lm"] and job_extras(diarizer) == ["diarization"]
    assert job_extras(OmegaConf.to_object(compose("train", ["run_dir=/x"]))) == []
    pins = requirements(job_extras(with_lm) + job_extras(diarizer))
    assert "pyannote.metrics==3.2.1" in pins and "pyctcdecode==0.5.0" in pins and "torch==2.13.0" in pins


def test_a_whisper_run_is_launched_and_its_model_deployed(aws, whisper_demo_run, tmp_path):
    """hw=sagemaker submits a Whisper run as it does a CTC one (its metrics included), and deploy.py packs a Whisper
    model/ (its generation config, processor and tokenizer) with the handler that answers it."""
    from conftest import WHISPER_DEMO

    launch = run_cli("train.py", *WHISPER_DEMO, "trainer.max_steps=2", "hw=sagemaker", f"sagemaker.role={ROLE}",
                     f"sagemaker.bucket={BUCKET}", f"sagemaker.region={REGION}", "sagemaker.container_hw=cpu",
                     f"hydra.run.dir={tmp_path / 'launch'}", timeout=300)
    assert launch.returncode == 0, launch.stderr[-3000:]
    name = re.search(r"SageMaker training job: (\S+)", launch.stdout).group(1)
    request = created_job(aws["recording"], name)
    assert "model=whisper_scratch" in request["HyperParameters"]["overrides"]
    assert {"eval_wer", "eval_cer"} <= {d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}

    model_dir = whisper_demo_run[0] / "model"
    done = run_cli("deploy.py", f"model_dir={model_dir}", f"sagemaker.role={ROLE}", f"sagemaker.bucket={BUCKET}",
                   f"sagemaker.region={REGION}", "endpoint.name=speechkit-whisper", f"hydra.run.dir={tmp_path}",
                   timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    url = client("sagemaker").describe_model(ModelName="speechkit-whisper")["PrimaryContainer"]["ModelDataUrl"]
    body = client("s3").get_object(Bucket=BUCKET, Key=url[len(f"s3://{BUCKET}/"):])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json",
            "tokenizer_config.json", "code/inference.py", "code/requirements.txt"} <= names
