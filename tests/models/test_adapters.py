"""conf/adapter: LoRA (peft) on every family speechkit trains and MMS's language adapters. An adapter trains what it
says and nothing else, its checkpoints hold only that (and resume exactly), model/ ships whole weights the stock
pipeline loads and transcribes as speechkit scored, or the adapter alone, which loads back onto its base; what cannot
work is refused in one line naming the key, before any data is read."""

import csv
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_DEMO, TINY, TINY_WHISPER, WHISPER_FAST, compose, run_cli, stopped_copy

RUN = ["experiment=demo", *SMALL_DEMO, *TINY, "hw=cpu", "trainer.max_steps=6", "trainer.batch_size=4",
       "trainer.batch_duration_s=null", "trainer.eval_batch_size=6", "trainer.warmup_steps=2",
       "trainer.learning_rate=3e-3", "trainer.logging_steps=1", "trainer.progress_bar=false", "trainer.save_steps=2",
       "trainer.save_total_limit=null", "trainer.eval_steps=null", "trainer.eval_at_epoch_end=false",
       "trainer.final_model=last"]


def _predictions(run_dir):
    with open(run_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _trained_counts(log: str):
    found = re.search(r"Adapter (\w+) .*?: ([\d,]+) of ([\d,]+) parameters trained", log)
    assert found, log[-2000:]
    return found.group(1), int(found.group(2).replace(",", "")), int(found.group(3).replace(",", ""))


def _stock_pipeline_transcribes_as_speechkit_scored(run_dir, model_dir=None):
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(model_dir or run_dir / "model"))
    rows = _predictions(run_dir)
    assert rows and any(r["hypothesis"] for r in rows)
    for row in rows:
        assert asr(row["id"])["text"] == row["hypothesis"], row["id"]


@pytest.mark.slow
def test_lora_trains_its_updates_and_the_head_only_resumes_exactly_and_ships_merged_weights(tmp_path, caplog):
    from speechkit.commands import train

    full = tmp_path / "full"
    with caplog.at_level("INFO"):
        train.run(compose("train", [*RUN, "adapter=lora", f"run_dir={full}"]))
    kind, trained, total = _trained_counts(caplog.text)
    assert kind == "lora" and 0 < trained < total / 2
    assert "LoRA merged into the weights it updates" in caplog.text

    # a checkpoint holds the low-rank updates and the CTC head (trained in full), nothing of the frozen model
    held = load_file(full / "checkpoints" / "step-6" / "model.safetensors")
    assert sum(t.numel() for t in held.values()) == trained
    assert all(".lora_A." in k or ".lora_B." in k or k.startswith("lm_head.modules_to_save.") for k in held), held
    assert any("attention.q_proj.lora_A" in k for k in held) and any("feed_forward.output_dense.lora_B" in k
                                                                      for k in held)
    assert (full / "checkpoints" / "step-6" / "optimizer.bin").is_file()

    # model/ holds whole weights with the updates merged in: plain names, what the stock pipeline loads
    shipped = load_file(full / "model" / "model.safetensors")
    assert not any("lora" in k or "modules_to_save" in k for k in shipped)
    assert torch.equal(shipped["lm_head.weight"], held["lm_head.modules_to_save.default.weight"])
    _stock_pipeline_transcribes_as_speechkit_scored(full)
    card = (full / "model" / "README.md").read_text()
    assert "## Adapter" in card and "lora (r=16, alpha=32" in card and "updates merged into the weights" in card

    # stopped after step 4 and resumed: the same updates, the same shipped weights, bit for bit
    stopped = stopped_copy(full, tmp_path / "stopped", ("step-6",))
    train.run(compose("train", [*RUN, "adapter=lora", "trainer.resume=auto", f"run_dir={stopped}"]))
    again = load_file(stopped / "model" / "model.safetensors")
    assert set(again) == set(shipped) and all(torch.equal(again[k], shipped[k]) for k in shipped)

    refused = run_cli("train.py", *RUN, "adapter=lora", "adapter.r=8", "trainer.resume=auto",
                      f"hydra.run.dir={stopped}")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "adapter=lora (r=16" in refused.stderr and "then, lora (r=8" in refused.stderr


@pytest.mark.slow
def test_an_mms_adapter_trains_its_layers_and_the_ctc_head_resumes_exactly_and_ships_beside_the_whole_model(tmp_path, caplog):
    from transformers import Wav2Vec2ForCTC

    from speechkit.commands import train

    run_dir = tmp_path / "run"
    with caplog.at_level("INFO"):
        train.run(compose("train", [*RUN, "adapter=mms", "adapter.attn_dim=8", f"run_dir={run_dir}"]))
    kind, trained, total = _trained_counts(caplog.text)
    held = load_file(run_dir / "checkpoints" / "step-6" / "model.safetensors")
    assert kind == "mms" and sum(t.numel() for t in held.values()) == trained < total / 2
    assert all(".adapter_layer." in k or k.startswith("lm_head.") for k in held), held

    model_dir = run_dir / "model"
    adapter = load_file(model_dir / "adapter.en.safetensors")  # as the MMS checkpoints ship theirs (demo_en: en)
    assert set(adapter) == set(held) and all(torch.equal(adapter[k], held[k]) for k in held)  # final_model=last
    assert json.loads((model_dir / "config.json").read_text())["adapter_attn_dim"] == 8
    loaded = Wav2Vec2ForCTC.from_pretrained(model_dir, target_lang="en")  # transformers' own way to an MMS adapter
    assert loaded.target_lang == "en"
    _stock_pipeline_transcribes_as_speechkit_scored(run_dir)

    stopped = stopped_copy(run_dir, tmp_path / "stopped", ("step-6",))  # resumed after step 4: the same adapter
    train.run(compose("train", [*RUN, "adapter=mms", "adapter.attn_dim=8", "trainer.resume=auto",
                                f"run_dir={stopped}"]))
    again = load_file(stopped / "model" / "adapter.en.safetensors")
    assert set(again) == set(adapter) and all(torch.equal(again[k], adapter[k]) for k in adapter)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A 'pretrained' wav2vec2 checkpoint in the Hub's layout (random weights, a CTC head of another vocabulary and
    its feature extractor): the base an adapter is trained on and shipped against."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = tmp_path_factory.mktemp("base") / "wav2vec2-tiny"
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=[16, 16, 32, 32], conv_kernel=[10, 8, 4, 4], conv_stride=[5, 4, 4, 4],
                            conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=7)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "mms"])
def test_an_adapter_shipped_alone_is_small_and_loads_onto_its_base_as_trained(adapter, base_checkpoint, tmp_path):
    from speechkit.commands import evaluate, train

    run_dir = tmp_path / "run"
    train.run(compose("train", [*RUN, f"model.name_or_path={base_checkpoint}", f"adapter={adapter}",
                                "adapter.ship=adapter", f"run_dir={run_dir}"]))
    model_dir = run_dir / "model"
    assert not (model_dir / "model.safetensors").exists()
    weights = model_dir / ("adapter_model.safetensors" if adapter == "lora" else "adapter.en.safetensors")
    assert weights.stat().st_size < (base_checkpoint / "model.safetensors").stat().st_size / 2
    card = (model_dir / "README.md").read_text()
    assert f"base_model: {base_checkpoint}" in card and "adapter.ship=adapter" in card

    # evaluate.py loads the folder onto the base its card names, and scores what the run scored
    evaluate.run(compose("evaluate", [f"model_dir={model_dir}", "dataset=demo_en", *SMALL_DEMO, "hw=cpu",
                                      f"run_dir={tmp_path / 'eval'}"]))
    assert _predictions(tmp_path / "eval") == _predictions(run_dir)

    # the card's own code, run as written (the folder's path filled in), builds the same model
    code = re.search(r"```python\n(.*?)```", card.split("## Adapter")[1], re.S).group(1)
    scope = {}
    exec(code.replace("path/to/this/folder", str(model_dir)), scope)
    from speechkit.models import load

    ours, _ = load(str(model_dir))
    theirs = scope["model"].state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["whisper", "ast"])
def test_lora_trains_and_ships_a_whisper_model_and_a_classifier(family, tmp_path, caplog):
    """The other heads: a sequence-to-sequence model (its training-only CTC layer trained in full beside the
    updates, and not shipped) and an audio classifier (its classifier trained in full)."""
    from transformers import pipeline

    from speechkit.commands import train

    run_dir = tmp_path / "run"
    overrides = {"whisper": ["experiment=demo_whisper", *SMALL_DEMO, *TINY_WHISPER, *WHISPER_FAST,
                             "task.whisper_ctc_weight=0.3"],
                 "ast": ["experiment=demo_commands", "dataset.demo.num_train=16", "dataset.demo.num_test=6",
                         "model=ast_tiny", "model.architecture.hidden_size=32", "model.architecture.num_hidden_layers=1",
                         "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=64",
                         "trainer.batch_size=8", "trainer.progress_bar=false"]}[family]
    with caplog.at_level("INFO"):
        train.run(compose("train", [*overrides, "adapter=lora", "adapter.r=4", "trainer.max_steps=2",
                                    "trainer.save_steps=2", f"run_dir={run_dir}"]))
    held = load_file(run_dir / "checkpoints" / "step-2" / "model.safetensors")
    head = {"whisper": "ctc_head", "ast": "classifier"}[family]
    assert any(k.startswith(f"{head}.modules_to_save.") for k in held), sorted(held)[-4:]
    assert all(".lora_" in k or ".modules_to_save." in k for k in held)
    assert any({"whisper": "encoder_attn.q_proj.lora_A", "ast": "mlp.fc2.lora_B"}[family] in k for k in held)
    shipped = load_file(run_dir / "model" / "model.safetensors")
    assert not any("lora" in k or "modules_to_save" in k or k.startswith("ctc_head.") for k in shipped)
    task = {"whisper": "automatic-speech-recognition", "ast": "audio-classification"}[family]
    rows = _predictions(run_dir)
    answer = pipeline(task, model=str(run_dir / "model"))(rows[0]["id"])
    if family == "whisper":
        assert answer["text"].strip() == rows[0]["hypothesis"].strip()
    else:
        assert answer[0]["label"] == rows[0]["prediction"]


# ------------------------------------------- targets and refusals, fast (the values' one-line refusals: test_config)
def test_each_familys_lora_targets_are_its_attention_and_feed_forward_projections():
    """The family's targets matched against each tiny architecture's real modules (built on the meta device)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoConfig

    from speechkit.models import family_of
    from speechkit.models.base import auto_class

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    expected = {
        ("wav2vec2", "ctc"): {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"},
        ("hubert", "ctc"): {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"},
        ("wavlm", "ctc"): {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"},
        ("wav2vec2-bert", "ctc"): {"linear_q", "linear_k", "linear_v", "linear_out", "intermediate_dense",
                                   "output_dense"},
        ("audio-spectrogram-transformer", "classification"): {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"},
        ("whisper", "seq2seq"): {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    }
    for (kind, head), names in expected.items():
        extra = {"whisper": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)}.get(kind, small)
        config = AutoConfig.for_model(kind, **extra, **({"vocab_size": 5} if head == "ctc" else {}))
        with torch.device("meta"):
            model = auto_class(head).from_config(config)
        lora = LoraConfig(target_modules=family_of(kind).lora_targets)
        matched = [n for n, _ in model.named_modules() if check_target_module_exists(lora, n)]
        assert {n.rsplit(".", 1)[-1] for n in matched} == names, kind
        assert not any(n.startswith(("lm_head", "classifier", "proj_out")) for n in matched), kind


def test_a_lora_target_matching_no_module_is_refused_before_any_data_is_read(tmp_path):
    from speechkit.commands import train
    from speechkit.config import ConfigError

    cfg = compose("train", ["experiment=demo", *TINY, "adapter=lora", "adapter.target_modules=[query_key_value]",
                            "dataset=audiofolder", f"dataset.path={tmp_path / 'no-such-folder'}",
                            f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"^adapter.target_modules=\['query_key_value'\]: no module of the "
                                          r"wav2vec2 model is named so \(its linear layers end in .*q_proj"):
        train.run(cfg)
