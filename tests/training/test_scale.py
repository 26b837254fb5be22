"""Scaling out, for real: Hydra multiruns (basic and joblib launchers) and an optuna search as `train.py`
subprocesses, the SLURM launcher as Hydra builds it, two-process DDP training on the CPU (gloo) through
`accelerate launch` and through a SLURM job's tasks, and the Docker images through hadolint."""

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CONF, REPO, SMALL_DEMO, TINY, accelerate_launch, compose, free_port, run_cli
from speechkit.commands import evaluate

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)

FAST = ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.warmup_steps=2", "trainer.logging_steps=1",
        "trainer.progress_bar=false", "trainer.learning_rate=1e-3"]
SWEEP = ["experiment=demo", *SMALL_DEMO, *TINY, *FAST, "trainer.max_steps=2"]
NUM_TEST = 6  # SMALL_DEMO's eval split


def logged_final_wer(run_dir: Path) -> str:
    """The shipped model's eval WER as the run itself logged it (4 decimals)."""
    found = re.findall(r"Final model .*: eval WER ([0-9.]+)", (run_dir / "train.log").read_text())
    assert len(found) == 1, found
    return found[0]


def log_span(run_dir: Path):
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", (run_dir / "train.log").read_text(), re.M)
    parse = lambda s: datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    return parse(stamps[0]), parse(stamps[-1])


def check_sweep(sweep: Path, done: subprocess.CompletedProcess, expected_overrides: list, steps: int = 2) -> list:
    """Both run dirs complete, and the summary (printed, summary.tsv, summary.jsonl) right, line by line."""
    results = [json.loads(line) for line in (sweep / "summary.jsonl").read_text().splitlines()]
    assert [r["job"] for r in results] == list(range(len(expected_overrides)))
    tsv = (sweep / "summary.tsv").read_text().splitlines()
    assert tsv[0] == "job\toverrides\tobjective\trun_dir" and len(tsv) == 1 + len(expected_overrides)
    for r, line, overrides in zip(results, tsv[1:], expected_overrides):
        run_dir = sweep / str(r["job"])
        for name in ("config.yaml", "metrics.jsonl", "model/model.safetensors", "model/vocab.json",
                     f"checkpoints/step-{steps}/trainer_state.json", "job_result.json"):
            assert (run_dir / name).exists(), (run_dir, name)
        assert r["status"] == "completed" and Path(r["run_dir"]) == run_dir
        assert set(overrides) <= set(r["overrides"])  # summary.jsonl keeps every override of the job
        assert line == f"{r['job']}\t{' '.join(overrides)}\t{logged_final_wer(run_dir)}\t{run_dir}"
        assert line in done.stdout  # the same table is printed at the end
    assert f"Summary written to {sweep / 'summary.tsv'}" in done.stdout
    return results


def test_multirun_basic_launcher_runs_each_value_in_its_own_dir_and_summarises(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli("train.py", "-m", *SWEEP, "trainer.learning_rate=1e-6,1e-3", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    check_sweep(sweep, done, [["trainer.learning_rate=1e-06"], ["trainer.learning_rate=0.001"]])
    for job, lr in ((0, 1e-6), (1, 1e-3)):  # each job really ran with its own value
        assert yaml.safe_load((sweep / str(job) / "config.yaml").read_text())["trainer"]["learning_rate"] == lr


def test_multirun_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    # Jobs long enough to overlap although the second worker process may start its imports seconds after the first
    longer = [o for o in SWEEP if not o.startswith("trainer.max_steps=")] + ["trainer.max_steps=40"]
    done = run_cli("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *longer,
                   "trainer.seed=1,2", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    check_sweep(sweep, done, [["trainer.seed=1"], ["trainer.seed=2"]], steps=40)
    (start0, end0), (start1, end1) = log_span(sweep / "0"), log_span(sweep / "1")
    assert start0 < end1 and start1 < end0  # the two jobs' runs overlapped in time: two worker processes


def test_optuna_search_minimises_the_eval_wer(tmp_path):
    sweep = tmp_path / "sweep"
    fixed = [o for o in SWEEP if not o.startswith("trainer.learning_rate=")]  # searched, so not fixed here
    # Two steps barely move a model from its random init, so the trials' WERs must differ for another reason, or
    # picking the smaller one is not tested. The tiny model's light conv encoder, untrained, emits one long "word"
    # per clip (WER exactly 1.0 for every trial); wav2vec2's own 7-layer conv stack emits many short ones, whose
    # WER depends on the initial weights. So this sweep uses that stack and adds the seed to the search from the
    # command line (the sweeper's own syntax): WERs 2.72 and 3.79 with the sweeper's seeded sampler.
    garbling = ["model.architecture.conv_dim=[32,32,32,32,32,32,32]", "model.architecture.conv_kernel=[10,3,3,3,3,2,2]",
                "model.architecture.conv_stride=[5,2,2,2,2,2,2]", "model.architecture.conv_bias=false"]
    done = run_cli("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *fixed, *garbling,
                   "trainer.seed=choice(1,2)", f"hydra.sweep.dir={sweep}")  # no -m: the overlay sets MULTIRUN
    assert done.returncode == 0, done.stderr[-3000:]
    searched = ("trainer.learning_rate", "model.mask_time_prob", "model.layerdrop", "trainer.seed")
    trials = [json.loads(line) for line in (sweep / "summary.jsonl").read_text().splitlines()]
    assert len(trials) == 2

    def params(trial):
        return {k: float(v) for k, v in (o.split("=", 1) for o in trial["overrides"]) if k in searched}

    for trial in trials:
        p = params(trial)
        assert set(p) == set(searched)
        assert 1e-5 <= p["trainer.learning_rate"] <= 1e-3 and 0 <= p["model.mask_time_prob"] <= 0.1
        assert 0 <= p["model.layerdrop"] <= 0.2
        assert f"{trial['objective']:.4f}" == logged_final_wer(Path(trial["run_dir"]))  # the objective: the shipped WER
        used = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())  # the trial ran with them
        assert (used["trainer"]["learning_rate"], used["model"]["mask_time_prob"], used["model"]["layerdrop"]) == \
            (p["trainer.learning_rate"], p["model.mask_time_prob"], p["model.layerdrop"])
    assert params(trials[0]) != params(trials[1])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    wers = [t["objective"] for t in trials]
    assert wers[0] != wers[1]
    assert results["best_value"] == min(wers)
    best = trials[wers.index(min(wers))]
    assert results["best_params"] == pytest.approx(params(best))


def test_slurm_launcher_is_built_with_the_cluster_settings(tmp_path, monkeypatch):
    """No SLURM here: compose as `train.py -m hydra/launcher=submitit_slurm ...` would, build the launcher Hydra
    would build, and render the sbatch script submitit would submit."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from speechkit.cli import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=a100",
                                "hydra.launcher.nodes=2", "hydra.launcher.account=speech",
                                f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
        with pytest.raises(ConfigCompositionException):  # checked against the plugin's schema
            compose("train", ["hydra/launcher=submitit_slurm", "hydra.launcher.partiton=a100"],
                    return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["partition"], params["account"], params["nodes"]) == ("a100", "speech", 2)
    assert (params["gpus_per_node"], params["tasks_per_node"], params["cpus_per_task"]) == (8, 8, 8)
    assert (params["timeout_min"], params["mem_gb"]) == (1440, 256)
    assert params["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    # The executor as SlurmLauncher.launch sets it up (init keys apart, non-generic keys prefixed "slurm_").
    # submitit only checks that an `srun` is on the PATH (this one is never run: nothing is submitted).
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params["max_num_timeout"])
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    sbatch = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in ("#SBATCH --partition=a100", "#SBATCH --account=speech", "#SBATCH --nodes=2",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=1440", "#SBATCH --mem=256GB", "export SUBMITIT_EXECUTOR=slurm"):
        assert line in sbatch, line


# ------------------------------------------------------------------------------------------ several processes
DDP = ["experiment=demo", "hw=cpu", *SMALL_DEMO, *TINY, *FAST,
       "trainer.batch_duration_s=11",  # 24 clips: 5-6 batches by duration, 3 per process and epoch
       "trainer.max_steps=6", "trainer.eval_steps=3", "trainer.save_steps=3", "trainer.save_total_limit=null",
       "model.gradient_checkpointing=true", "model.layerdrop=0.5",  # the combination DDP is known to trip on
       "model.mask_time_prob=0.2"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    done = accelerate_launch(*DDP, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-5000:]
    return run_dir, done


def test_two_processes_eval_every_utterance_once_and_write_artifacts_once(ddp_run, tmp_path):
    run_dir, done = ddp_run
    log = (run_dir / "train.log").read_text()
    assert log.count("2 process(es)") == 2  # "Hardware: ..." and "Training ...": once each, main process only
    assert "2 process(es), distribution DDP (data parallel on CPUs, gloo)" in log and "not applied" not in log
    for step in range(1, 7):
        assert log.count(f"train step={step}/6 ") == 1
    assert done.stdout.count("Final eval on 'test'") == 1

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]  # one line per step: written by one process
    # Each process takes its own half of each epoch's batches (the same number every epoch, the last round padded
    # when odd): 3 steps make exactly one epoch.
    assert "3 steps/epoch" in log
    assert [m["epoch"] for m in train] == [0.3333, 0.6667, 1.0, 1.3333, 1.6667, 2.0]
    assert [m["step"] for m in evals] == [3, 6]
    for m in evals:  # gathered from both processes: every eval utterance, each counted once
        assert m["eval_utterances"] == NUM_TEST
        assert m["eval_gathered"] >= NUM_TEST

    for step in (3, 6):
        ckpt = run_dir / "checkpoints" / f"step-{step}"
        # accelerate.save_state ran in both processes: one RNG state each, one model, one trainer state.
        assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "trainer_state.json"} <= \
            {p.name for p in ckpt.iterdir()}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "step-3", "step-6"]
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert [p.name for p in run_dir.parent.iterdir()] == ["run"]  # no second run dir from the other process

    # The shipped model scored by one process over the whole split gives exactly the two-process final eval.
    final = re.search(r"Final eval on 'test' \((\d+) utterances\): WER ([0-9.]+)  CER ([0-9.]+)", done.stdout)
    assert final and int(final.group(1)) == NUM_TEST
    single = evaluate.run(compose("evaluate", [f"model_dir={run_dir / 'model'}", "dataset=demo_en", *SMALL_DEMO,
                                                 "split=test", "hw=cpu", f"run_dir={tmp_path}"]))
    assert single.rows == list(range(NUM_TEST))
    scores = single.metrics
    assert (f"{scores['eval_wer']:.4f}", f"{scores['eval_cer']:.4f}") == (final.group(2), final.group(3))


def slurm_tasks(*args: str, tasks: int = 2) -> list:
    """What a job of hydra/launcher=submitit_slurm with `tasks` tasks runs on its node: train.py once per task, each
    told its place by SLURM's variables (set here as srun sets them; there is no SLURM on this machine)."""
    port, procs = free_port(), []
    for rank in range(tasks):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242",
               "SLURM_NTASKS": str(tasks), "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_JOB_NODELIST": "localhost",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * tasks, "\n".join(o[-3000:] for o in outputs)
    return outputs


def test_two_process_run_resumes_exactly_as_a_requeued_slurm_job(ddp_run, tmp_path):
    """The run stopped after its step-3 checkpoint goes on with trainer.resume=auto, as a SLURM job requeued after
    a timeout would: its two tasks join one DDP job (speechkit/hardware.py) and end with the very weights and state
    of the uninterrupted `accelerate launch` run."""
    run_dir, _ = ddp_run
    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped)
    for later in ("checkpoints/step-6", "checkpoints/best", "model"):
        shutil.rmtree(stopped / later)
    metrics_file = stopped / "metrics.jsonl"
    metrics_file.write_text("".join(line + "\n" for line in metrics_file.read_text().splitlines()
                                    if json.loads(line)["step"] <= 3))
    slurm_tasks(*DDP, f"hydra.run.dir={stopped}", "trainer.resume=auto")
    log = (stopped / "train.log").read_text()
    assert "SLURM job: 2 processes, master localhost:" in log and "Resumed from" in log
    full, resumed = run_dir / "checkpoints" / "step-6", stopped / "checkpoints" / "step-6"
    assert json.loads((full / "trainer_state.json").read_text()) == \
        json.loads((resumed / "trainer_state.json").read_text())
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # 1-3 from before the stop
    assert [m["eval_utterances"] for m in metrics if m["kind"] == "eval"] == [NUM_TEST, NUM_TEST]


@pytest.mark.parametrize("name,flag,expected", [
    ("multi_gpu", "multi_gpu", {}),
    ("fsdp", "use_fsdp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                          "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}),
    ("deepspeed", "use_deepspeed", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
])
def test_accelerate_config_files_are_read_by_accelerate_launch(name, flag, expected):
    """docs/hardware.md's `accelerate launch --config_file accelerate/<name>.yaml train.py ...`: accelerate's own
    parser and validation read each file, and the environment it would give train.py is as intended (no GPUs here
    to run them on)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    import transformers.models.wav2vec2.modeling_wav2vec2 as wav2vec2

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "accelerate" / f"{name}.yaml"),
                                              str(REPO / "train.py"), "experiment=demo"])
    args, defaults, _ = _validate_launch_command(args)
    assert getattr(args, flag) and args.num_processes == 8 and args.mixed_precision == "no"
    if name == "deepspeed":  # as launch_command does before handing over to DeepSpeed's launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    assert {k: env.get(k) for k in expected} == expected
    for cls in filter(None, env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",")):
        assert hasattr(wav2vec2, cls), cls  # the layers FSDP wraps exist under these names


@pytest.mark.parametrize("option,classes,layers", [
    ("tiny", ["Wav2Vec2EncoderLayerStableLayerNorm"], 2),
    ("whisper_scratch", ["WhisperDecoderLayer", "WhisperEncoderLayer"], 3),
])
def test_fsdp_shards_a_tiny_model_of_each_family_layer_by_layer_in_two_cpu_processes(option, classes, layers):
    """accelerate/fsdp.yaml on two CPU processes (gloo). accelerate applies FSDP on GPUs only (a CPU launch of the file
    runs as DDP, and the log says so: test_hardware.py), so the two processes (tests/support/fsdp_worker.py, under
    torchrun)
    shard as accelerate's fsdp2_prepare_model would: the plugin the file makes, the layer classes speechkit gives it
    from the family (its log names them), accelerate's wrap policy, torch's FSDP2 fully_shard; then two steps."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "accelerate" / "fsdp.yaml"),
                                              str(REPO / "train.py")])
    args, _, _ = _validate_launch_command(args)
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(REPO / "tests" / "support" / "fsdp_worker.py"),
                           option],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    model = {"tiny": "Wav2Vec2ForCTC", "whisper_scratch": "WhisperForConditionalGeneration"}[option]
    assert result["said"] == [f"FSDP shards {model} layer by layer: {', '.join(classes)}"]
    assert result["world"] == 2 and result["sharded"] and sorted(set(result["units"])) == classes
    assert len(result["units"]) == layers
    assert result["local"] < result["total"] * 0.55  # each process holds about half of every parameter
    assert all(loss == loss for loss in result["losses"]) and result["losses"][1] < result["losses"][0]


# ----------------------------------------------------------------------------------------------- containers
DOCKERFILES = ["Dockerfile.cuda", "Dockerfile.rocm"]


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("hadolint")), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    done = hadolint(REPO / name)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (REPO / name).read_text().splitlines()
    for i, line in enumerate(lines):  # every rule ignored says why, in the comment just above
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nCMD python train.py\n")
    done = hadolint(bad)
    assert done.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3014", "DL3015", "DL3025"):
        assert rule in done.stdout, rule


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_essentials(name):
    text = (REPO / name).read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest")
    assert base.startswith("pytorch/pytorch:2.13.0-cuda" if name.endswith("cuda") else "rocm/pytorch:")
    assert "2.13.0" in base  # the torch speechkit pins
    assert re.search(r"^ENV PYTHONUNBUFFERED=1", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["python", "/opt/speechkit/train.py"\]$', text, re.M)
    assert "-c /tmp/torch-constraint.txt" in text  # the image's GPU torch is kept


def test_rocm_image_keeps_the_miopen_cache_where_speechkit_looks(monkeypatch):
    from speechkit.config import HardwareConfig
    from speechkit.hardware import miopen_cache_dir

    text = (REPO / "Dockerfile.rocm").read_text()
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)(?:\s*\\)?$", text, re.M))
    volume = json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M).group(1))
    monkeypatch.setenv("SPEECHKIT_CACHE", env["SPEECHKIT_CACHE"])
    where = miopen_cache_dir(HardwareConfig())  # what hw=rocm uses in the container
    assert [where] == volume and env["MIOPEN_USER_DB_PATH"] == where == env["MIOPEN_CUSTOM_CACHE_DIR"]


def test_dockerignore_keeps_outputs_and_environments_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "outputs", "multirun"):
        assert entry in ignored
    for needed in ("speechkit", "conf", "train.py", "pyproject.toml"):
        assert needed not in ignored
