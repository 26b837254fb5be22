"""Shared test setup: offline, hermetic caches, the real config tree, and small real audio fixtures."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A model small enough that a training step takes well under a second on 2 cores.
TINY = [
    "model.architecture.hidden_size=32",
    "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=2",
    "model.architecture.intermediate_size=64",
    "model.architecture.conv_dim=[16,16,32,32]",
    "model.architecture.num_conv_pos_embeddings=16",
    "model.architecture.num_conv_pos_embedding_groups=2",
]
# A small synthesized corpus (espeak-ng), shared by the whole session through the cache.
SMALL_DEMO = ["dataset.demo.num_train=24", "dataset.demo.num_test=6"]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    """No test may reach the Hub; caches live in a temporary folder, not the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(cache / "hf"),
        "SPEECHKIT_CACHE": str(cache / "speechkit"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts without accelerate's process-wide state. It is a singleton that keeps the first test's
    device and precision: on a machine with a GPU, a test that builds `Accelerator(cpu=True)` (hw=cpu) followed by
    one on hw=auto (the GPU, in fp16) would otherwise be refused by accelerate ("AcceleratorState has already been
    initialized and cannot be changed")."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _checkout_files() -> set:
    """Every file under the checkout that is not a cache Python itself writes (git's own files excepted)."""
    skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv"}  # tools' own caches
    found = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        found |= {os.path.relpath(os.path.join(root, f), REPO) for f in files}
    return found


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """No test writes outside its temporary folders: the checkout holds the same files after the session as before
    (a run dir left under outputs/, a stray model, a report beside the sources all fail the session)."""
    before = _checkout_files()
    yield
    new = sorted(_checkout_files() - before)
    assert not new, f"the tests wrote into the checkout: {new[:10]}"


TYPED_SECRETS = ["logger.tracking_uri=https://bob:S3cr3t-pw@mlflow.example.com/api",
                 "logger.entity=hf_FakeHubToken0123456789abcdefXYZ"]


@pytest.fixture(scope="session")
def asr_demo_run(tmp_path_factory):
    """`python train.py experiment=demo ...` for a few steps, as a user would type it: a tiny speech recognition
    model, shared by the tests that need one. Two secrets are typed in it (unused with logger=none), which no file
    of the run may hold (test_logger)."""
    run_dir = tmp_path_factory.mktemp("demo_run")
    done = run_cli("train.py", "experiment=demo", *SMALL_DEMO, *TINY, "trainer.batch_size=4",
                   "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
                   "trainer.progress_bar=false", "trainer.max_steps=3",
                   "trainer.learning_rate=1e-6",  # stays near its random init: transcripts are non-empty noise
                   *TYPED_SECRETS, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


TINY_WHISPER = ["model=whisper_scratch", "model.architecture.d_model=32", "model.architecture.encoder_layers=1",
                "model.architecture.decoder_layers=1", "model.architecture.encoder_attention_heads=2",
                "model.architecture.decoder_attention_heads=2", "model.architecture.encoder_ffn_dim=64",
                "model.architecture.decoder_ffn_dim=64", "model.architecture.max_target_positions=48"]
WHISPER_FAST = ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.warmup_steps=2",
                "trainer.logging_steps=1", "trainer.progress_bar=false", "trainer.learning_rate=3e-3", "hw=cpu",
                "task.decoder.max_new_tokens=12"]
WHISPER_DEMO = ["experiment=demo_whisper", *SMALL_DEMO, *TINY_WHISPER, *WHISPER_FAST]


@pytest.fixture(scope="session")
def whisper_demo_run(tmp_path_factory):
    """`python train.py experiment=demo_whisper` for a few steps on the small demo corpus, as typed: a tiny Whisper
    (with the hallucination probe on), shared by the tests that need one."""
    run_dir = tmp_path_factory.mktemp("whisper_run") / "run"
    done = run_cli("train.py", *WHISPER_DEMO, "trainer.max_steps=12", "trainer.save_steps=6", "trainer.eval_steps=6",
                   "task.hallucination_probe=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir, done


def stopped_copy(full: Path, stopped: Path, later) -> Path:
    """`full`'s run dir as it stood before its checkpoints `later` (and best/, model/) were written: a run stopped
    there, to be resumed."""
    import shutil

    shutil.copytree(full, stopped)
    for name in (*later, "best"):
        shutil.rmtree(stopped / "checkpoints" / name, ignore_errors=True)
    shutil.rmtree(stopped / "model")
    return stopped


def compose(config_name: str = "train", overrides: List[str] = ()):
    """The real Hydra composition of conf/, as `python train.py <overrides>` would see it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from speechkit.cli import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def run_cli(script: str, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py in a real subprocess, as a user would."""
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def jiwer_wer(run_dir: Path) -> float:
    """The WER of a run's predictions.csv, computed by jiwer from its references and hypotheses (not by speechkit)."""
    import jiwer

    with open(run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, run_dir
    return jiwer.wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows])


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    """Real speech from espeak-ng (22.05 kHz mono WAV)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def write_metadata(folder: Path, rows, file_column: str = "file_name", text_column: str = "transcription") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([file_column, text_column])
        w.writerows(rows)


def write_tone(path: Path, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.3) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (for a local server, or torch.distributed's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_handler(path=None):
    """The handler as deploy.py ships it and serve.py serves it: speechkit/inference/ bundled into one file
    (code/inference.py), written to a temporary folder and imported from it as the module `inference`, as SageMaker's
    container imports it; so a bundling mistake fails the tests that use it. Made once per process. `path`: a
    code/inference.py unpacked from a model.tar.gz, imported as it is."""
    import atexit
    import shutil
    import tempfile

    from speechkit.inference import bundle

    global _SHIPPED
    if path is not None:
        return bundle.imported(path)
    if _SHIPPED is None:  # a folder of its own, which a test may import it from in another process
        folder = tempfile.mkdtemp(prefix="speechkit-handler-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SHIPPED = bundle.load(folder)
    return _SHIPPED


_SHIPPED = None


def serve_and_post_wav(model_dir, wav, *overrides: str) -> dict:
    """`serve.py model_dir=... <overrides>` started on a free port, one WAV posted to /invocations, the JSON answer;
    the server stopped whatever happens."""
    import json
    import sys
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "serve.py"), f"model_dir={model_dir}", f"port={port}",
                               *overrides],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, seconds=120)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=open(wav, "rb").read(), headers={"Content-Type": "audio/wav"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    """Until `url` answers 200, or `proc` exits, or `seconds` pass."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(url)


def accelerate_launch(*args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 train.py ...`, as docs/hardware.md says for the CPU: two
    processes joined by torch.distributed (gloo, since hw=cpu)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), str(REPO / "train.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def long_recording(clips, path: Path, seconds: float = 120.0) -> Path:
    """A recording of `seconds` at least: the clips (files) one after the other, 0.8 s of silence after each, round
    again until it is long enough, written to `path` as WAV at their rate."""
    audio, rate = [], None
    while rate is None or sum(len(a) for a in audio) < seconds * rate:
        for clip_path in clips:
            clip, rate = sf.read(clip_path, dtype="float32")
            audio += [clip, np.zeros(int(0.8 * rate), np.float32)]
    sf.write(path, np.concatenate(audio), rate)
    return path

