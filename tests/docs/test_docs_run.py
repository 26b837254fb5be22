"""The doc-run lane: every command the docs show that runs offline is run, as written, on a tiny budget.

    .venv/bin/python -m pytest -n 2 --dist load -m docs_run    # about 5 minutes on 2 cores; not in the default suite

test_docs.py composes every command through the real configs (a moved or misspelt key, a gone option, a value out of
range fail there, in every lane). This lane goes further: each command that needs neither the Hub, nor a GPU, nor
AWS is run for real, its own arguments untouched, with a small corpus, a tiny model and two training steps appended
(the last word wins in Hydra, so the appended budget replaces the page's epochs, steps and sizes and nothing else).
`<run>` is a real run of the kind the command needs (speech recognition, classification, diarization), trained once
here; `/my/data`, `/my/recordings`, `/my/meetings` and `call.wav` are real espeak-ng speech (the folder in the
layout data.md gives: train/ and test/, each with its metadata.csv). Every command left out is left out
for a reason this module states and checks against the command's composed config (its model or data on the Hub,
its backend a GPU or SageMaker), so a command cannot drop out of the lane unnoticed.
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from conftest import (REPO, SMALL_DEMO, TINY, TINY_WHISPER, free_port, run_cli, serve_and_post_wav, speak,
                      write_metadata)
from test_docs import all_commands, composed, make_stand_ins, speechkit_command

FAST = ["trainer.warmup_steps=1", "trainer.logging_steps=1", "trainer.progress_bar=false", "trainer.max_steps=2",
        "trainer.save_steps=2", "trainer.eval_steps=2", "trainer.batch_duration_s=null", "trainer.batch_size=4",
        "trainer.eval_batch_size=4"]
# The budget a training command gets appended, by the corpus it trains on (its model made tiny the same way)
BUDGET = {"demo_en": [*SMALL_DEMO, *TINY],
          "demo_commands": ["dataset.demo.words=[up,down,stop]", *SMALL_DEMO, *TINY],
          "demo_diarization": ["dataset.demo.num_train=12", "dataset.demo.num_test=3", *TINY],
          "whisper": [*SMALL_DEMO, *TINY_WHISPER[1:], "task.decoder.max_new_tokens=12"]}
SWEEP_BUDGET = ["hydra.sweeper.n_trials=2"]  # an Optuna search: two trials, not the page's 30


def distinct_commands():
    """Each speechkit command the docs show, once (the first page and line showing it)."""
    seen, out = set(), []
    for page, line, command, _ in all_commands():
        if speechkit_command(command, "R", "F") and command not in seen:
            seen.add(command)
            out.append((f"{page}:{line}", command))
    return out


HUB_MODEL = re.compile(r"\bmodel=(wav2vec2_base|xlsr_53|w2v_bert_2|hubert\w*|wavlm\w*|mms\w*|ast\w*|"
                       r"whisper_(?!scratch)\w+)\b")
HUB_DATA = re.compile(r"\b(dataset=(fleurs_es|hub|superb|audioset|callhome_es)|experiment=(aws_superb|rocm_\w+|"
                      r"whisper_small_fleurs_es))\b")


def left_out(command: str) -> Optional[str]:
    """Why a command is not run here (None: it is): the Hub, a GPU, AWS, or the user's own data folder."""
    if re.search(r"\bhw=sagemaker\b|\bdeploy\.py\b", command):
        return "AWS"
    if re.search(r"\bhw=(cuda|rocm)\b", command) or ("accelerate launch" in command and "hw=cpu" not in command):
        return "GPU"
    if re.search(r"hydra/launcher=submitit_slurm", command):
        return "SLURM"
    if HUB_DATA.search(command) or re.search(r"model_dir=[A-Za-z][\w-]*/[\w.-]+(?:\s|$)", command) \
            or (HUB_MODEL.search(command) and "model.name_or_path=null" not in command):
        return "Hub"
    if re.search(r"task=diarization\b.*dataset=audiofolder\b", command):
        return "your data"  # recorded meetings with their RTTM turns
    return None


def check_left_out(reason: str, script: str, cfg, command: str) -> str:
    """What the composed config says about a command left out for `reason` (an empty string: it agrees)."""
    get = lambda key: _get(cfg, key)  # noqa: E731
    backend = getattr(get("hw.backend"), "value", get("hw.backend"))
    if reason == "AWS":
        return "" if script == "deploy.py" or backend == "sagemaker" else f"hw.backend={backend}"
    if reason == "GPU":  # a GPU backend, or several processes launched on whatever `auto` finds (GPUs, on a cluster)
        launched = script == "train.py" and backend == "auto" and command.startswith("accelerate launch")
        return "" if backend in ("cuda", "rocm") or launched else f"hw.backend={backend}"
    if reason == "Hub":
        model_dir = get("model_dir")  # evaluate.py's: a Hub id rather than a folder
        on_hub = get("model.name_or_path") or get("dataset.source") == "hub" \
            or bool(model_dir and not Path(model_dir).exists())
        return "" if on_hub else "neither its model nor its data is on the Hub"
    if reason == "your data":
        return "" if get("dataset.source") == "audiofolder" and get("task.name") == "diarization" else \
            f"dataset.source={get('dataset.source')}, task {get('task.name')}"
    return ""


def _get(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_every_command_left_out_is_left_out_for_its_stated_reason(tmp_path):
    """Composed through the real configs, a command left out needs what its reason says; one that is run trains on
    an offline corpus and a random-init model."""
    make_stand_ins(tmp_path)
    ran = 0
    for where, command in distinct_commands():
        script, args = speechkit_command(command, str(tmp_path / "run"), str(tmp_path / "data"))
        reason = left_out(command)
        cfg = composed(script, args, tmp_path)
        if reason:
            disagrees = check_left_out(reason, script, cfg, command)
            assert not disagrees, f"{where}: {command}: left out for {reason}, but {disagrees}"
        else:
            ran += 1
            if script == "train.py":
                assert _get(cfg, "dataset.source") in ("demo", "audiofolder") \
                    and _get(cfg, "model.name_or_path") is None, f"{where}: {command}"
    assert ran >= 30, ran  # most commands the pages show run offline


# ------------------------------------------------------------------------------------------- the runs <run> is
SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
             "a cup of tea in the morning", "the rain in spain stays mainly in the plain", "open the door please",
             "we will meet at noon tomorrow"]


def train(run_dir: Path, *args: str) -> Path:
    done = run_cli("train.py", *args, *FAST, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained run of each kind a `<run>` of the pages stands for, and folders of real speech."""
    root = tmp_path_factory.mktemp("docs_run")
    recordings = root / "recordings"
    for split, count in (("train", 8), ("test", 4)):
        rows = []
        for k in range(count):
            sentence = SENTENCES[(k + count) % len(SENTENCES)]
            (recordings / split).mkdir(parents=True, exist_ok=True)
            speak(sentence, recordings / split / f"clip {k}.wav", voice=("en-us", "en-gb")[k % 2])
            rows.append((f"clip {k}.wav", sentence))
        write_metadata(recordings / split, rows)
    return {"asr": train(root / "asr", "experiment=demo", *BUDGET["demo_en"]),
            "classification": train(root / "classification", "experiment=demo_commands", *BUDGET["demo_commands"]),
            "diarization": train(root / "diarization", "experiment=demo_diarization", *BUDGET["demo_diarization"]),
            "recordings": recordings}


def placed(command: str, runs: dict, work: Path):
    """(script, arguments) of the command with its placeholders made real: `<run>` the run of the kind it needs."""
    kind = "diarization" if "diarize.py" in command or "demo_diarization" in command else \
        "classification" if "demo_commands" in command and "train.py" not in command else "asr"
    run = runs[kind]
    if "trainer.resume" in command:  # a resumed run goes on in a copy: the others use this one
        shutil.copytree(run, work / "resumed")
        run = work / "resumed"
    command = command.replace("<asr run>", str(runs["asr"]))
    if "=call.wav" in command:
        shutil.copy(runs["recordings"] / "test" / "clip 0.wav", work / "call.wav")
    return speechkit_command(command, str(run), str(runs["recordings"]))


def budget(script: str, command: str) -> list:
    if script != "train.py":
        return ["progress_bar=false"] if script in ("transcribe.py", "diarize.py") else []
    corpus = "whisper" if "whisper" in command else "demo_commands" if "demo_commands" in command else \
        "demo_diarization" if "demo_diarization" in command else "demo_en"
    extra = [*BUDGET[corpus], *FAST]
    if re.search(r"\bmodel=(?!tiny\b|whisper)", command):  # another encoder's own convolutions kept, its sizes made tiny
        extra = [e for e in extra if not e.startswith("model.architecture.conv_dim=")]
    for name in re.findall(r"\+dataset@eval_sets\.(\w+)=", command):  # an evaluation set as small as the corpus
        extra += [f"eval_sets.{name}.demo.num_train=24", f"eval_sets.{name}.demo.num_test=6"]
    if "hparams_search=optuna" in command:
        extra += SWEEP_BUDGET
    return extra


RUN = [pytest.param(command, id=f"{where} {command[:60]}") for where, command in distinct_commands()
       if not left_out(command)]


@pytest.mark.docs_run
@pytest.mark.slow
@pytest.mark.parametrize("command", RUN)
def test_the_command_runs_as_written(command, runs, tmp_path):
    script, args = placed(command, runs, tmp_path)
    if script == "serve.py":
        return serve(args, runs, tmp_path)
    extra = budget(script, command)
    multirun = "-m" in args or "hparams_search=" in command
    where = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if multirun else \
        [] if any(a.startswith("hydra.run.dir=") for a in args) else \
        [f"hydra.run.dir={tmp_path / 'out'}"] if script in ("train.py", "evaluate.py", "inspect_data.py") else []
    if command.startswith("accelerate launch"):  # its own flags kept, a free rendezvous port added
        words = shlex.split(command)
        flags = words[2:words.index("train.py")]
        done = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch",
                               f"--main_process_port={free_port()}", *flags, str(REPO / "train.py"), *args, *extra,
                               *where], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    else:
        done = run_cli(script, *args, *extra, *where, cwd=tmp_path)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if script == "train.py" and "--cfg" not in args:
        made = list(tmp_path.rglob("model/config.json"))
        assert made or "trainer.resume" in command, f"{command}: no model shipped"



def serve(args, runs, tmp_path):
    """A server command: started on a free port (the page's port replaced), until it answers a WAV; exported first
    when it serves an ONNX runtime, as the page's preceding `export.py` does."""
    model = next(a.split("=", 1)[1] for a in args if a.startswith("model_dir="))
    runtime = next((a.split("=", 1)[1] for a in args if a.startswith("inference.runtime=")), "torch")
    if runtime.startswith("onnx"):
        quantize = ["quantize=int8"] if runtime == "onnx_int8" else []
        done = run_cli("export.py", f"model_dir={model}", *quantize, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    given = [a for a in args if not a.startswith(("model_dir=", "port=", "host="))]
    answer = serve_and_post_wav(model, runs["recordings"] / "test" / "clip 0.wav", *given, "host=127.0.0.1")
    assert "text" in answer, answer
