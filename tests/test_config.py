"""Composition of the real config tree, and the errors a user gets for a bad config."""

from enum import Enum

import pytest
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException

from conftest import CONF, compose, run_cli
from speechkit.config import ConfigError, check_required

GROUPS = ["task", "dataset", "model", "hw", "trainer", "logger", "experiment", "hparams_search", "debug"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes(group, option):
    cfg = compose("train", [f"{group}={option}", "run_dir=/tmp/unused"])
    assert OmegaConf.is_config(cfg)
    if group not in ("experiment", "hparams_search", "debug"):
        assert group in cfg
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (to_yaml would not resolve them)


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_composes_for_evaluate(option):
    cfg = compose("evaluate", [f"dataset={option}", "model_dir=/m", "run_dir=/tmp/unused"])
    assert cfg.dataset.name


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


def test_demo_experiment_overlays_groups():
    cfg = compose("train", ["experiment=demo", "run_dir=/tmp/x"])
    assert cfg.dataset.name == "demo_en" and cfg.model.name == "tiny" and cfg.hw.backend == "cpu"
    assert cfg.model.name_or_path is None
    assert cfg.trainer.learning_rate != compose("train", ["run_dir=/tmp/x"]).trainer.learning_rate


def test_pretrained_models_point_at_the_hub_checkpoints():
    assert compose("train", ["model=wav2vec2_base", "run_dir=/x"]).model.name_or_path == "facebook/wav2vec2-base"
    assert compose("train", ["model=xlsr_53", "run_dir=/x"]).model.name_or_path == "facebook/wav2vec2-large-xlsr-53"


def test_misspelt_key_is_refused_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["trainer.learning_rat=1e-4"])
    assert "learning_rat" in str(err.value.__cause__ or err.value) or "learning_rat" in str(err.value)


def test_wrong_type_is_refused_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["trainer.batch_size=eight"])
    text = f"{err.value} {err.value.__cause__}"
    assert "batch_size" in text


def test_bad_enum_value_is_refused():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["dataset.text.digits=sometimes"])
    assert "digits" in f"{err.value} {err.value.__cause__}"


def test_missing_required_value_is_named_before_any_work():
    cfg = compose("train", ["dataset=audiofolder", "run_dir=/tmp/x"])
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        check_required(cfg)


def test_cli_unknown_group_option_lists_the_choices():
    done = run_cli("train.py", "model=wav2vec3")
    assert done.returncode != 0
    assert "model/wav2vec3" in done.stderr
    for option in options("model"):
        assert option in done.stderr


def test_cli_missing_model_dir_for_evaluate(tmp_path):
    done = run_cli("evaluate.py", f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0 and "model_dir" in done.stderr


def test_cli_prints_composed_config():
    done = run_cli("train.py", "--cfg", "job", "dataset=hub", "dataset.path=google/fleurs", "model=xlsr_53")
    assert done.returncode == 0, done.stderr
    cfg = OmegaConf.create(done.stdout)
    assert cfg.model.name_or_path == "facebook/wav2vec2-large-xlsr-53"
    assert cfg.dataset.path == "google/fleurs"


def test_hparams_search_optuna_sets_up_the_sweeper():
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", ["hparams_search=optuna", "experiment=demo"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.storage is None  # in memory (see the config)
    assert set(sweeper.params) == {"trainer.learning_rate", "model.mask_time_prob", "model.layerdrop"}
    assert cfg.trainer.learning_rate == compose("train", ["experiment=demo", "run_dir=/x"]).trainer.learning_rate


# ------------------------------------------------------------------------------ values checked before any work
# One bad value per key that has a constraint (speechkit/validation.py), with the script whose config has it.
BAD_VALUES = [
    ("train.py", "trainer.learning_rat=1e-3"), ("train.py", "datset.path=/x"),  # misspelt: did you mean ...?
    ("evaluate.py", "batchsize=4"), ("serve.py", "inference.thread=2"),
    ("train.py", "trainer.num_epochs=0"), ("train.py", "trainer.max_steps=0"), ("train.py", "trainer.batch_size=0"),
    ("train.py", "trainer.batch_duration_s=-5"), ("train.py", "trainer.eval_batch_size=0"),
    ("train.py", "trainer.gradient_accumulation_steps=0"), ("train.py", "trainer.learning_rate=-1"),
    ("train.py", "trainer.weight_decay=-0.1"), ("train.py", "trainer.adam_beta1=1.0"),
    ("train.py", "trainer.adam_beta2=-0.5"), ("train.py", "trainer.adam_epsilon=0"),
    ("train.py", "trainer.warmup_steps=-1"), ("train.py", "trainer.max_grad_norm=0"),
    ("train.py", "trainer.num_workers=-2"), ("train.py", "trainer.logging_steps=0"),
    ("train.py", "trainer.eval_steps=0"), ("train.py", "trainer.save_steps=-100"),
    ("train.py", "trainer.save_total_limit=-1"), ("train.py", "model.sampling_rate=0"),
    ("train.py", "model.attention_dropout=1.5"), ("train.py", "model.hidden_dropout=-0.1"),
    ("train.py", "model.activation_dropout=2"), ("train.py", "model.feat_proj_dropout=-1"),
    ("train.py", "model.final_dropout=1.01"), ("train.py", "model.mask_time_prob=3"),
    ("train.py", "model.layerdrop=1.5"), ("train.py", "dataset.filters.min_duration_s=-1"),
    ("train.py", "dataset.filters.max_duration_s=0"), ("train.py", "dataset.filters.silence_peak=1"),
    ("train.py", "dataset.carve.test_ratio=1.5"), ("train.py", "dataset.num_proc=0"),
    ("train.py", "dataset.demo.num_train=0"), ("train.py", "dataset.demo.num_test=-3"),
    ("train.py", "dataset.demo.speeds=[20]"), ("train.py", "dataset.demo.pitches=[120]"),
    ("train.py", "dataset.demo.voices=[]"), ("train.py", "hw.num_threads=0"),
    ("train.py", "dataset.shuffle_buffer=0"), ("train.py", "trainer.tri_stage.hold_ratio=1"),
    ("train.py", "trainer.tri_stage.final_lr_ratio=-0.1"),
    ("evaluate.py", "batch_size=0"), ("evaluate.py", "num_examples=-1"), ("inspect_data.py", "sampling_rate=0"),
    ("inspect_data.py", "top_chars=-1"), ("serve.py", "port=70000"), ("serve.py", "inference.max_body_mb=0"),
    ("serve.py", "inference.chunk_length_s=-20"), ("serve.py", "inference.stride_length_s=-1"),
    ("serve.py", "inference.read_timeout_s=0"), ("serve.py", "inference.threads=0"),
    ("serve.py", "inference.max_audio_s=0"),
    ("serve.py", "inference.queue=-1"), ("export.py", "tolerance=-0.1"), ("export.py", "model_dir=/no/such/model"),
    ("serve.py", "inference.runtime=tensorrt"), ("evaluate.py", "inference.runtime=onnx_fp16"),
    ("transcribe.py", "inference.runtime=int8"),
    ("deploy.py", "endpoint.instance_count=0"), ("train.py", "task=audio_classification task.max_length_s=0"),
    ("train.py", "task.decoder.type=kenlm task.decoder.order=1"),
    ("train.py", "task.decoder.type=kenlm task.decoder.discount=1.5"),
    ("train.py", "task.decoder.type=kenlm task.decoder.tune_trials=0"),
    ("train.py", "task=diarization task.chunk_s=0"), ("train.py", "task=diarization task.threshold=1"),
    ("train.py", "task=diarization task.max_speakers=9"), ("train.py", "task=diarization task.min_turn_s=-1"),
    ("train.py", "task=diarization task.collar_s=-0.25"), ("evaluate.py", "collar_s=-1"),
    ("diarize.py", "batch_size=0"), ("diarize.py", "asr_model_dir=/no/such/model"),
    ("train.py", "trainer.ema_decay=1.5"), ("train.py", "trainer.average_last=1"),
    ("train.py", "trainer.average_last=4 trainer.save_total_limit=2"),
    ("train.py", "augment.warmup_epochs=-1"), ("train.py", "augment.speed.factors=[0.9,0]"), ("train.py", "augment.noise.prob=2"),
    ("train.py", "augment.reverb.prob=-1"), ("train.py", "augment.gain.prob=1.1"),
    ("train.py", "augment.noise.babble_share=3"), ("train.py", "augment.noise.babble_speakers=0"),
    ("train.py", "augment.reverb.rt60_s_min=0"), ("train.py", "augment.reverb.rt60_s_max=9"),
    ("train.py", "augment.specaugment.time_prob=2"), ("train.py", "augment.specaugment.feature_prob=-1"),
    ("train.py", "augment.specaugment.time_length=0"), ("train.py", "augment.specaugment.feature_length=0"),
    ("train.py", "augment.specaugment.time_masks=-1"), ("train.py", "augment.specaugment.feature_masks=-2"),
    ("train.py", "augment.noise.snr_db_min=20 augment.noise.snr_db_max=5"),
    ("train.py", "augment.gain.db_min=3 augment.gain.db_max=-3"),
    ("train.py", "augment=noise augment.noise.path=/no/such/noise"),
    ("train.py", "augment=reverb augment.reverb.path=/no/such/rirs"),
    ("evaluate.py", "dataset=demo_en_shifted dataset.demo.shifted_voices=[en-us]"),
    ("train.py", "adapter=lora adapter.r=0"), ("train.py", "adapter=lora adapter.alpha=0"),
    ("train.py", "adapter=lora adapter.dropout=1"), ("train.py", "adapter=mms adapter.attn_dim=0"),
    ("train.py", "adapter=lora adapter.target_modules=[]"),
    ("train.py", "model=hubert_large adapter=mms"),  # HuBERT has no MMS adapter layers
    ("train.py", "task=audio_classification dataset=demo_commands adapter=mms"),  # they are a CTC head's
    ("train.py", "adapter=lora adapter.ship=adapter"),  # model=tiny is built from scratch: no base to name
    ("train.py", "trainer.best_eval_set=shifted"),  # no eval set of that name
    # paths that must exist, and combinations that cannot work
    ("train.py", "trainer.resume=/no/such/checkpoint"), ("train.py", "task.vocab.path=/no/such/vocab.json"),
    ("train.py", "model.name_or_path=/no/such/checkpoint"), ("evaluate.py", "model_dir=/no/such/model"),
    ("train.py", "dataset.filters.min_duration_s=5 dataset.filters.max_duration_s=2"),
    ("train.py", "model=ast_tiny"),  # an AST has no CTC head: it cannot do task=asr (the default)
    ("train.py", "task=diarization model=ast_tiny"),  # nor a frame-level head
    ("train.py", "task.name=diarization"),  # the asr option's schema under another task's name
    ("train.py", "trainer.optimizer=adamw_8bit"),  # bitsandbytes is not installed here
    ("train.py", "task.decoder.num_beams=0"), ("train.py", "task.decoder.max_new_tokens=0"),
    ("train.py", "task.hallucination_probe=-1"), ("evaluate.py", "hallucination_probe=-2"),
    ("train.py", "model=whisper_scratch task.decoder.type=kenlm"),  # an LM decodes CTC frames, Whisper generates
    ("train.py", "model=whisper_small dataset=hub dataset.path=org/data dataset.language=null"),  # for its prompt
    ("train.py", "model=whisper_scratch model.freeze_feature_encoder=true"),  # Whisper has no such encoder
    ("train.py", "model.freeze_encoder=true"),  # a CTC encoder has no decoder to train alone
    ("train.py", "task.whisper_ctc_weight=0.3"),  # a CTC model's loss is CTC already
    ("train.py", "model=whisper_scratch task.whisper_ctc_weight=1"),  # the decoder would learn nothing
    ("train.py", "hub.push=true"),  # and no hub.repo_id
    ("train.py", "dataset.streaming=true"),  # and no trainer.max_steps: a stream has no length
    ("train.py", "dataset=superb trainer.max_steps=5 dataset.streaming=true"),  # carving a streamed Hub split
    ("train.py", "task.decoder.type=kenlm task.decoder.text_file=/no/such/corpus.txt"),
    ("serve.py", "inference.chunk_length_s=4 inference.stride_length_s=3"),
    ("transcribe.py", "chunk_length_s=0"), ("transcribe.py", "stride_length_s=-1"),
    ("transcribe.py", "chunk_length_s=4 stride_length_s=2"),
]
REQUIRED = {"evaluate.py": ["model_dir=/no/such/model"], "serve.py": ["model_dir=/no/such/model"],
            "diarize.py": ["model_dir=/no/such/model", "audio=/no"],
            "deploy.py": ["model_dir=/no/such/model"], "transcribe.py": ["model_dir=/no/such/model", "audio=/no"],
            "export.py": ["model_dir=/no/such/model"]}


def _refusal(script: str, overrides: str, tmp_path):
    """The script run as a user would, with the bad value and whatever else it requires."""
    given = overrides.split()
    extra = [o for o in REQUIRED.get(script, []) if o.split("=")[0] not in {g.split("=")[0] for g in given}]
    return run_cli(script, *given, *extra, f"hydra.run.dir={tmp_path / 'run'}")


@pytest.mark.parametrize("script,overrides", BAD_VALUES)
def test_every_bad_value_is_refused_in_one_line_before_any_work(script, overrides, tmp_path):
    done = _refusal(script, overrides, tmp_path)
    key = overrides.split()[-1].split("=")[0]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("speechkit: config error: ") and key in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_the_table_covers_every_constrained_key():
    from speechkit.validation import RANGES

    tested = {o.split("=")[0] for _, overrides in BAD_VALUES for o in overrides.split()}
    assert set(RANGES) <= tested
    composed = [compose(name, over) for name, over in (
        ("train", ["run_dir=/x"]), ("train", ["task=audio_classification", "run_dir=/x"]),
        ("train", ["task=diarization", "run_dir=/x"]), ("evaluate", ["model_dir=/m", "run_dir=/x"]),
        ("inspect", ["run_dir=/x"]),
        ("serve", ["model_dir=/m"]), ("deploy", ["model_dir=/m", "run_dir=/x"]),
        ("transcribe", ["model_dir=/m", "audio=/a"]), ("diarize", ["model_dir=/m", "audio=/a"]),
        ("export", ["model_dir=/m"]))]
    for key in RANGES:  # no constraint on a key that no config has (a typo would silently check nothing)
        assert any(OmegaConf.select(c, key, default="absent") != "absent" for c in composed), key


def test_a_one_split_folder_says_how_to_carve_a_test_split(tmp_path):
    from conftest import speak, write_metadata

    speak("one clip", tmp_path / "0.wav")
    write_metadata(tmp_path, [("0.wav", "one clip")])
    done = run_cli("train.py", "dataset=audiofolder", f"dataset.path={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}")
    assert done.returncode == 2 and "dataset.carve.from_split=train" in done.stderr, done.stderr[-2000:]


def _leaves(node, prefix=()):
    for key in node:
        if key in ("defaults", "hydra"):
            continue
        child = node._get_node(key)
        if OmegaConf.is_dict(child) and len(child):
            yield from _leaves(child, prefix + (key,))
        else:
            yield prefix + (key,), child._value() if not OmegaConf.is_config(child) else OmegaConf.to_container(child)


def test_each_default_is_stated_once():
    """A group option's YAML states only what differs from its schema's default (speechkit/config.py), so a default
    cannot drift between two places. Experiments are exempt: a recipe spells out its own values key by key."""
    from enum import Enum

    from speechkit import config as C

    from speechkit.tasks import TASKS

    schemas = {"dataset": C.DatasetConfig, "model": C.ModelConfig, "hw": C.HardwareConfig,
               "trainer": C.TrainerConfig, "logger": C.LoggerConfig, "paths": C.PathsConfig,
               "augment": C.AugmentConfig}
    files = [(p, schemas[p.parent.name]) for group in schemas for p in sorted((CONF / group).glob("*.yaml"))]
    files += [(CONF / "task" / f"{name}.yaml", entry.schema) for name, entry in TASKS.items()]  # one schema each
    files += [(CONF / f"{name}.yaml", schema) for name, schema in (
        ("train", C.TrainConfig), ("evaluate", C.EvaluateConfig), ("serve", C.ServeConfig),
        ("deploy", C.DeployConfig), ("transcribe", C.TranscribeConfig), ("inspect", C.InspectConfig))]
    plain = lambda v: v.value if isinstance(v, Enum) else v  # noqa: E731
    twice = []
    for path, schema in files:
        defaults = OmegaConf.structured(schema)
        for key, value in _leaves(OmegaConf.load(path)):
            default = OmegaConf.select(defaults, ".".join(key), default=KeyError, throw_on_missing=False)
            if default is KeyError or OmegaConf.is_missing(defaults, ".".join(key)):
                continue
            default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
            if isinstance(default, list):
                default = [plain(v) for v in default]
            if plain(default) == plain(value) and type(plain(default)) is type(plain(value)):
                twice.append(f"{path.relative_to(CONF)}: {'.'.join(key)}")
    assert not twice, twice


# ------------------------------------------------------------------------------- each task its own config
def test_no_task_schema_carries_another_tasks_fields():
    """Each conf/task option composes onto its own schema (speechkit/tasks/__init__.py's registry): no two share a
    knob but their name, and no shared group (dataset, model, trainer) holds one of them."""
    from dataclasses import fields

    from speechkit import config as C
    from speechkit.tasks import TASKS

    own = {name: {f.name for f in fields(entry.schema)} - {"name"} for name, entry in TASKS.items()}
    for a in own:
        for b in own:
            assert a == b or not own[a] & own[b], (a, b, own[a] & own[b])
    knobs = set().union(*own.values())
    for shared in (C.DatasetConfig, C.ModelConfig, C.TrainerConfig, C.HardwareConfig):
        assert not {f.name for f in fields(shared)} & knobs, shared
    for name in TASKS:
        cfg = compose("train", [f"task={name}", "run_dir=/x"])
        assert OmegaConf.get_type(cfg.task) is TASKS[name].schema and set(cfg.task) == own[name] | {"name"}
    assert "vocab" not in compose("train", ["run_dir=/x"]) and "decoder" not in compose("train", ["run_dir=/x"])


# Keys the per-task configs moved, as a user who learnt the old ones types them, and the new key the refusal names.
MOVED = [("decoder=kenlm", "task.decoder.type=kenlm"), ("decoder.alpha=0.3", "task.decoder.alpha=0.3"),
         ("vocab.path=/a/vocab.json", "task.vocab.path=/a/vocab.json"), ("vocab=chars", "task.vocab"),
         ("model.ctc_zero_infinity=false", "task.ctc_zero_infinity=false"),
         ("dataset.text_column=sentence", "dataset.columns.text=sentence"),
         ("dataset.label_column=tags", "dataset.columns.label=tags"),
         ("+dataset.segment_columns=[a,b,c]", "dataset.columns.segments=[a,b,c]")]


@pytest.mark.parametrize("old,new", MOVED)
def test_a_moved_key_is_refused_naming_its_new_one(old, new, tmp_path):
    done = run_cli("train.py", old, f"hydra.run.dir={tmp_path}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("speechkit: config error: "), done.stderr
    assert new in lines[0] and "Traceback" not in done.stderr
    assert compose("train", [new, "run_dir=/x"] if "=" in new else ["run_dir=/x"])  # the new one composes


@pytest.mark.parametrize("content,words", [
    (b'{"a": 1,\n "b": }', "Expecting value at line 2, column 7"),  # a damaged file: where it goes wrong
    (b'["a", "b"]', "a JSON object of symbol -> integer id"),  # valid JSON, not a vocab
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_damaged_vocab_file_is_refused_naming_where_it_goes_wrong(content, words, tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_bytes(content)
    done = _refusal("train.py", f"task.vocab.path={bad}", tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and str(bad) in lines[0] and words in lines[0], done.stderr


@pytest.mark.parametrize("script,typed,meant", [
    ("train.py", "trainer.learning_rat=1e-3", "trainer.learning_rate"), ("train.py", "datset.path=/x", "dataset.path"),
    ("train.py", "task.vocab.pth=/v.json", "task.vocab.path"), ("evaluate.py", "batchsize=4", "batch_size"),
])
def test_a_misspelt_key_is_refused_with_the_key_meant(script, typed, meant, tmp_path):
    done = _refusal(script, typed, tmp_path)
    assert done.returncode == 2 and f"did you mean {meant}?" in done.stderr and "Traceback" not in done.stderr
    assert "+" + typed.split("=")[0] not in done.stderr  # not Hydra's advice to append it, which cannot work


@pytest.mark.parametrize("experiment", options("experiment"))
def test_no_key_of_a_composed_config_is_taken_for_a_misspelling(experiment):
    """Every key every experiment composes (any task's, any family's, free-form mappings' inner keys) passes the
    command-line check, so it refuses misspellings only."""
    from speechkit import config as C
    from speechkit.cli import unknown_key

    cfg = OmegaConf.to_container(compose("train", [f"experiment={experiment}", "run_dir=/x"]), resolve=False)

    def keys(node, prefix=""):  # key=its composed value (a name where the key takes one of a few), else 1
        for k, v in node.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [
                f"{prefix}{k}={v.value if isinstance(v, Enum) else v if isinstance(v, str) else 1}"]

    typed = [*keys(cfg), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+x.y=1", "-m"]
    assert len(typed) > 100 and unknown_key(typed, C.TrainConfig) is None


# --------------------------------------------------------------------------------------- the Hub out of reach
@pytest.fixture(scope="module")
def stand_in_hub():
    """An HTTP server on 127.0.0.1 answering the Hub's access check (/api/<kind>s/<owner>/<name>/auth-check) the
    way the Hub does, by the repo's name: `public-*` 200, `gated-*` 403 GatedRepo, `badtoken-*` 401, anything else
    404 RepoNotFound."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rstrip("/").split("/")[-2]
            status, headers = {"public": (200, {}), "gated": (403, {"X-Error-Code": "GatedRepo"}),
                               "badtoken": (401, {"X-Error-Message": "Invalid credentials in Authorization header"})
                               }.get(name.split("-")[0], (404, {"X-Error-Code": "RepoNotFound"}))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _online(endpoint: str, tmp_path, *overrides, offline: bool = False):
    """train.py with the Hub at `endpoint`, an empty cache, and offline mode as asked."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": str(int(offline)),
           "HF_DATASETS_OFFLINE": str(int(offline))}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("overrides,offline,status,said", [
    ("experiment=demo model=wav2vec2_base model.name_or_path=someone/gone-model", False, 2,
     "config error: model.name_or_path: no model 'someone/gone-model' on the Hub ({hub}): check the id; a private "
     "repo needs `hf auth login`"),
    ("dataset=hub dataset.path=someone/gated-data model=tiny", False, 1,
     "error: dataset.path: someone/gated-data is gated: accept its conditions on {hub}/datasets/someone/gated-data "
     "with your account, then `hf auth login`"),
    ("experiment=demo model=wav2vec2_base model.name_or_path=someone/badtoken-model", False, 1,
     "error: model.name_or_path: the Hub refused the token for someone/badtoken-model (401)"),
    ("dataset=fleurs_es model=tiny", True, 1,
     "error: dataset.path: google/fleurs is not in this machine's Hugging Face cache"),
])
def test_a_hub_repo_that_cannot_be_read_is_refused_in_one_line_naming_the_key(stand_in_hub, overrides, offline,
                                                                              status, said, tmp_path):
    done = _online(stand_in_hub, tmp_path, *overrides.split(), offline=offline)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("speechkit: " + said.format(hub=stand_in_hub)), lines[0]
    assert not (tmp_path / "run" / "drop_report.jsonl").exists()  # refused before any data work


def test_the_hub_out_of_reach_is_told_apart_and_a_cached_repo_still_used(tmp_path, monkeypatch, caplog):
    import socket

    from huggingface_hub import constants

    from speechkit.config import RunError
    from speechkit.hub_access import check_repo

    with socket.socket() as s:  # a port nothing listens on: connections refused, as with the network down
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    done = _online(closed, tmp_path, "experiment=demo", "model=wav2vec2_base")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"speechkit: error: model.name_or_path: the Hub ({closed}) cannot be reached to read "
                               "facebook/wav2vec2-base (ConnectError: "), lines[0]
    assert lines[0].endswith("it is not in this machine's cache: point model.name_or_path at a local folder, or run "
                             "with HF_HUB_OFFLINE=1 after filling the cache where the network is on")

    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RunError, match="cannot be reached"):
        check_repo("model.name_or_path", "facebook/wav2vec2-base", "model")
    (tmp_path / "hub" / "models--facebook--wav2vec2-base" / "snapshots" / "abc").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        check_repo("model.name_or_path", "facebook/wav2vec2-base", "model")  # in the cache: used, with advice
    assert "facebook/wav2vec2-base is read from this machine's cache; set HF_HUB_OFFLINE=1" in caplog.text
