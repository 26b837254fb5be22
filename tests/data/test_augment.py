"""conf/augment: each augmentation changes the audio as it should and leaves the label alone, draws the same for
(seed, epoch, clip) in every run, batches count what speed perturbation makes of a clip, resume is exact with it,
bad folders are refused in one line, SpecAugment reaches every family, and the shifted demo test set is what it
says."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import SMALL_DEMO, TINY, compose, run_cli, stopped_copy, write_tone
from speechkit.config import (AugmentConfig, ConfigError, GainConfig, NoiseConfig, ReverbConfig, SpecAugmentConfig,
                              SpeedConfig)
from speechkit.data import augment as A
from speechkit.data.samplers import DurationBatchSampler

RATE = 16000


def tone(seconds=2.0, hz=440.0, amplitude=0.3):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(audio):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * RATE / audio.size)


def augmenter(**parts):
    return A.Augmenter(AugmentConfig(**parts), RATE)


def test_speed_perturbation_resamples_tempo_and_pitch_and_says_each_length():
    a = augmenter(speed=SpeedConfig([0.9, 1.1]))
    x = tone()
    seen = {}
    for row in range(12):
        y, factor = a(x, 7, 0, row)
        seen[factor] = y
        assert y.size == a.stretched(x.size, factor) == a.lengths([x.size] * 12, 7, 0)[row]
    assert set(seen) == {0.9, 1.1}
    for factor, y in seen.items():  # 440 Hz played 1.1x as fast is 484 Hz; at 0.9x, 396 Hz
        assert abs(peak_hz(y) - 440 * factor) < 3, factor
        assert abs(y.size - x.size / factor) <= 1


def test_each_transform_changes_the_clip_as_stated_and_none_is_the_identity():
    x = tone(amplitude=0.2)
    same, factor = augmenter()(x, 1, 0, 0)
    assert factor == 1.0 and np.array_equal(same, x)

    for row in range(5):  # noise at an SNR in [10, 12] dB, made noise (colored, or babble of another clip)
        other = tone(hz=300, amplitude=0.5)
        noisy, _ = augmenter(noise=NoiseConfig(prob=1.0, snr_db_min=10, snr_db_max=12, babble_share=0.5))(
            x, 3, 0, row, lambda rng: other)
        snr = 10 * np.log10(np.mean(x ** 2) / np.mean((noisy - x) ** 2))
        assert 9.9 < snr < 12.1, snr

    loud, _ = augmenter(gain=GainConfig(prob=1.0, db_min=3, db_max=6))(x, 1, 0, 0)
    ratio = 20 * np.log10(np.abs(loud).max() / np.abs(x).max())
    assert 3 - 1e-4 <= ratio <= 6 + 1e-4

    wet, _ = augmenter(reverb=ReverbConfig(prob=1.0, rt60_s_min=0.5, rt60_s_max=0.5))(x, 1, 0, 0)
    click = np.zeros(RATE, np.float32)
    click[100] = 0.5
    tail, _ = augmenter(reverb=ReverbConfig(prob=1.0, rt60_s_min=0.5, rt60_s_max=0.5))(click, 1, 0, 0)
    assert wet.size == x.size and not np.allclose(wet, x)
    assert np.isclose(A.rms(wet), A.rms(x), rtol=1e-3)  # at its own loudness
    assert np.abs(tail[RATE // 4:]).max() > 0 and np.abs(tail[200:]).sum() > np.abs(tail[:100]).sum()  # decays

    off, _ = augmenter(noise=NoiseConfig(prob=0.0), gain=GainConfig(prob=0.0))(x, 1, 0, 0)
    assert np.array_equal(off, x)


def test_colored_noise_slopes_as_its_exponent_says():
    rng = np.random.default_rng(0)
    for exponent, slope in ((0.0, 0.0), (1.0, -1.0), (2.0, -2.0)):
        noise = A.colored_noise(rng, 2 ** 16, exponent)
        power = np.abs(np.fft.rfft(noise)) ** 2
        f = np.arange(power.size)
        low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 1000) & (f < 2000)].mean()
        assert abs(np.log10(high / low) - slope) < 0.25, exponent


def test_draws_depend_on_seed_epoch_and_clip_only():
    a = augmenter(speed=SpeedConfig([0.9, 1.0, 1.1]), noise=NoiseConfig(prob=0.7), reverb=ReverbConfig(prob=0.5),
                  gain=GainConfig(prob=0.5))
    x = tone()
    first, again = a(x, 42, 3, 17), a(x, 42, 3, 17)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    others = [a(x, 42, epoch, 17)[0] for epoch in range(4, 8)] + [a(x, 43, 3, 17)[0], a(x, 42, 3, 18)[0]]
    assert all(o.shape != first[0].shape or not np.array_equal(o, first[0]) for o in others)
    # a transform switched off leaves the others' draws as they were: each has its own stream
    without_gain = augmenter(speed=SpeedConfig([0.9, 1.0, 1.1]), noise=NoiseConfig(prob=0.7),
                             reverb=ReverbConfig(prob=0.5))
    assert without_gain.speed_of(42, 3, 17) == a.speed_of(42, 3, 17)


def test_warmup_epochs_ramp_the_share_of_changed_clips_from_none():
    """augment.warmup_epochs=2: the first epoch's clips get no noise, gain or reverb (speed perturbation as ever), the
    second's half the share, the third's and later the whole share; each clip's draw as without the ramp once it is
    full."""
    parts = dict(speed=SpeedConfig([0.9, 1.1]), noise=NoiseConfig(prob=0.6), gain=GainConfig(prob=0.6),
                 reverb=ReverbConfig(prob=0.6))
    ramped, full = augmenter(warmup_epochs=2, **parts), augmenter(**parts)
    x = tone(seconds=0.5)

    def changed(a, epoch):
        return sum(not np.array_equal(a(x, 5, epoch, row)[0], A.speed(x, a.speed_of(5, epoch, row))
                                      if a.speed_of(5, epoch, row) != 1.0 else x) for row in range(200))
    assert changed(ramped, 0) == 0
    assert 0.3 * changed(full, 1) < changed(ramped, 1) < 0.8 * changed(full, 1)
    for epoch in (2, 5):
        assert all(np.array_equal(ramped(x, 5, epoch, row)[0], full(x, 5, epoch, row)[0]) for row in range(20))
    assert "those shares reached over the first 2 epochs" in ramped.describe()


def test_duration_batches_follow_each_epochs_lengths_and_stay_within_budget():
    rng = np.random.default_rng(0)
    samples = rng.integers(RATE, 4 * RATE, size=300)
    a = augmenter(speed=SpeedConfig([0.9, 1.0, 1.1]))
    budget = 12 * RATE
    sampler = DurationBatchSampler(samples, budget, seed=1, lengths_at=lambda epoch: a.lengths(samples, 5, epoch))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        now = a.lengths(samples, 5, epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(samples.size))  # every clip once
        assert all(len(b) * now[b].max() <= budget for b in batches)  # padding counted at this epoch's lengths
        padded = sum(len(b) * now[b].max() for b in batches)
        assert 1 - now.sum() / padded < 0.06


def test_a_dataset_item_keeps_its_label_and_says_its_speed(tmp_path):
    from datasets import Dataset

    from speechkit.data import SpeechDataset

    rows = Dataset.from_dict({"audio": [str(write_tone(tmp_path / f"{i}.wav", 1.0 + i / 4, RATE)) for i in range(4)],
                              "num_samples": [int((1.0 + i / 4) * RATE) for i in range(4)]})
    a = augmenter(speed=SpeedConfig([0.9, 1.1]), noise=NoiseConfig(prob=1.0))
    plain = SpeechDataset(rows, RATE, targets=["a", "b", "c", "d"])
    changed = SpeechDataset(rows, RATE, targets=["a", "b", "c", "d"], seed=9, augment=a)
    assert plain.lengths_at is None and changed.lengths_at(2).tolist() == a.lengths(changed.samples, 9, 2).tolist()
    for i in range(4):
        item, base = changed[(2, i)], plain[i]
        assert item["labels"] == base["labels"] and item["index"] == i and item["draw"] == (9, 2, i)
        assert item["speed"] == a.speed_of(9, 2, i) and item["input_values"].size == changed.lengths_at(2)[i]
        assert "draw" not in base and base["speed"] == 1.0


def test_diarization_targets_follow_the_speed_of_a_clip():
    from speechkit.tasks.diarization import frame_targets

    turns = [(1.0, 2.0, "a")]
    hop = 0.02
    plain = frame_targets(turns, ["a"], 0.0, 200, hop, 1)
    faster = frame_targets(turns, ["a"], 0.0, 200, hop, 1, speed=1.25)  # the turn is at 0.8-1.6 s in the clip
    assert plain[:, 0].nonzero().min() * hop == pytest.approx(1.0, abs=hop)
    assert faster[:, 0].nonzero().min() * hop == pytest.approx(0.8, abs=hop)
    assert (faster[:, 0].nonzero().max() + 1) * hop == pytest.approx(1.6, abs=hop)


def test_noise_and_impulse_folders_are_read_and_a_bad_one_is_refused_naming_the_key(tmp_path):
    noise = tmp_path / "musan" / "noise" / "free-sound"
    noise.mkdir(parents=True)
    write_tone(noise / "hum.wav", 3.0, 22050)
    write_tone(noise / "short.WAV", 0.2, RATE)
    a = augmenter(noise=NoiseConfig(prob=1.0, path=str(tmp_path / "musan"), snr_db_min=0, snr_db_max=0))
    assert len(a.noises.files) == 2
    x = tone(hz=1000)
    y, _ = a(x, 1, 0, 0)
    assert abs(10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))) < 0.1  # 0 dB: as much noise as signal
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    impulse = np.zeros(RATE // 2, np.float32)
    impulse[50], impulse[4000] = 1.0, 0.5  # the direct sound, and one echo 0.25 s later
    sf.write(rirs / "room.flac", impulse, RATE)
    r = augmenter(reverb=ReverbConfig(prob=1.0, path=str(rirs)))
    click = np.zeros(RATE, np.float32)
    click[1000] = 0.5
    echoed, _ = r(click, 1, 0, 0)
    assert np.argsort(np.abs(echoed))[-2:].tolist() in ([1000, 1000 + 3950], [1000 + 3950, 1000])

    (noise / "broken.wav").write_bytes(b"RIFF not really audio")
    with pytest.raises(ConfigError, match=r"^augment\.noise\.path: .*broken\.wav cannot be read as audio"):
        augmenter(noise=NoiseConfig(prob=1.0, path=str(tmp_path / "musan")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^augment\.reverb\.path=.*: no audio files in it"):
        augmenter(reverb=ReverbConfig(prob=1.0, path=str(empty)))

    done = run_cli("train.py", "augment=noise", f"augment.noise.path={tmp_path / 'nowhere'}",
                   f"hydra.run.dir={tmp_path / 'refused'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"speechkit: config error: augment.noise.path='{tmp_path / 'nowhere'}' is not allowed: augment.noise.path "
        "must be null")
    done = run_cli("train.py", "augment=noise", f"augment.noise.path={tmp_path / 'musan'}", *SMALL_DEMO, *TINY,
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "augment.noise.path: " in done.stderr and "broken.wav cannot be read as audio" in done.stderr


def test_augment_options_compose_and_bad_values_are_refused():
    cfg = compose("train", ["augment=[speed,gain]"])
    assert list(cfg.augment.speed.factors) == [0.9, 1.0, 1.1] and cfg.augment.gain.prob == 0.5
    assert cfg.augment.noise.prob == 0 and not cfg.augment.specaugment.enabled
    every = compose("train", ["augment=all", "augment.noise.prob=0.8"])
    assert every.augment.reverb.prob == 0.3 and every.augment.noise.prob == 0.8 and every.augment.specaugment.enabled
    assert compose("train", []).augment == OmegaConf.structured(AugmentConfig)  # none: nothing changes
    from speechkit.validation import check_values

    for override, key in (("augment.noise.prob=1.5", "augment.noise.prob"),
                          ("augment.speed.factors=[0.9,3.0]", "augment.speed.factors"),
                          ("augment.noise.snr_db_max=1", "augment.noise.snr_db_max")):
        with pytest.raises(ConfigError, match=rf"^{key}="):
            check_values(compose("train", ["augment=all", override]))


def test_specaugment_reaches_each_family_in_its_own_terms():
    from speechkit.models import family_of
    from speechkit.models.ast import MaskedFilterBank
    from transformers import ASTConfig, ASTFeatureExtractor, Wav2Vec2Config, WhisperConfig

    spec = SpecAugmentConfig(enabled=True, time_prob=0.1, time_length=5, feature_prob=0.02, feature_length=8)
    w2v = family_of("wav2vec2").spec_augment(Wav2Vec2Config(), spec)
    assert w2v == {"mask_time_prob": 0.1, "mask_time_length": 5, "mask_feature_prob": 0.02,
                   "mask_feature_length": 8, "apply_spec_augment": True}
    assert family_of("whisper").spec_augment(WhisperConfig(), spec)["apply_spec_augment"] is True
    assert family_of("wav2vec2").spec_augment(Wav2Vec2Config(), SpecAugmentConfig()) == {}

    ast = family_of("audio-spectrogram-transformer")
    assert ast.spec_augment(ASTConfig(), spec) == {}
    fe = ASTFeatureExtractor(num_mel_bins=64, max_length=128)
    inputs = ast.inputs(ASTConfig(num_mel_bins=64, max_length=128), fe, spec)
    assert isinstance(inputs, MaskedFilterBank)
    batch = inputs([tone(1.28), tone(1.28, hz=880)])
    before = batch["input_values"].clone()
    inputs.mask(batch, [(1, 0, 0), (1, 0, 1)])
    masked = batch["input_values"] == 0
    assert masked.any() and not (before == 0).any()
    assert masked[0].all(dim=1).any() or masked[0].all(dim=0).any()  # whole frames or whole bins
    again = inputs([tone(1.28), tone(1.28, hz=880)])
    inputs.mask(again, [(1, 0, 0), (1, 0, 1)])
    assert torch.equal(again["input_values"], batch["input_values"])  # the same draws for (seed, epoch, row)
    assert not isinstance(ast.inputs(ASTConfig(), fe), MaskedFilterBank)  # evaluation, a saved model: no masks


RESUME = ["experiment=demo", *SMALL_DEMO, *TINY, "trainer.max_steps=9", "trainer.batch_duration_s=8",
          "trainer.warmup_steps=2", "trainer.logging_steps=1", "trainer.progress_bar=false", "trainer.save_steps=4",
          "trainer.eval_steps=null", "trainer.eval_at_epoch_end=false", "trainer.save_total_limit=null"]


def _resume_cfg(run_dir, *extra):
    return compose("train", [*RESUME, "augment=all", f"run_dir={run_dir}", *extra])


@pytest.mark.slow
def test_resume_with_augmentation_matches_an_uninterrupted_run(tmp_path, caplog):
    """9 steps cross an epoch (the lengths change with it); the resumed run continues from step 4 in a new process
    with its own loader worker (augmented batches on the CPU are made by one) and ends bit for bit the same."""
    from speechkit.commands import train

    full = tmp_path / "full"
    with caplog.at_level("INFO"):
        train.run(_resume_cfg(full))
    log = caplog.text
    assert "Augmentation (conf/augment): speed x0.9/1/1.1; reverberation" in log and "'num_workers': 1" in log
    stopped = stopped_copy(full, tmp_path / "stopped", ("step-8", "step-9"))
    train.run(_resume_cfg(stopped, "trainer.resume=auto"))
    a = load_file(full / "checkpoints" / "step-9" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-9" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(full / "checkpoints" / "step-4" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)
    losses = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    plain = tmp_path / "plain"
    train.run(_resume_cfg(plain, "augment=none", "trainer.max_steps=2"))
    plain_losses = [json.loads(line)["loss"] for line in (plain / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["kind"] == "train"]
    assert plain_losses[0] != losses[0]  # the augmented batches are not the plain ones

    refused = run_cli("train.py", *RESUME, "augment=none", "trainer.resume=auto", f"hydra.run.dir={stopped}")
    assert refused.returncode == 2 and "augmentation=speed x0.9/1/1.1" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_shifted_demo_set_speaks_the_test_sentences_in_new_voices_rooms_and_noise(tmp_path, asr_demo_run):
    from speechkit.data.demo_corpus import corpus_dir, ensure_corpus
    from speechkit.data.sources import load_source

    base = OmegaConf.to_object(compose("train", ["dataset=demo_en", *SMALL_DEMO]).dataset)
    shifted = OmegaConf.to_object(compose("train", ["dataset=demo_en_shifted", *SMALL_DEMO]).dataset)
    root = ensure_corpus(shifted)
    assert root == corpus_dir(shifted) != corpus_dir(base)
    splits = load_source(shifted)
    assert sorted(splits) == ["test", "test_noisy", "test_reverb"]
    test = load_source(base)["test"]
    assert sorted(splits["test"]["text"]) == sorted(test["text"])  # the demo's own held-out sentences
    for split in ("test_noisy", "test_reverb"):
        assert splits[split]["text"] == splits["test"]["text"]
    with open(f"{root}/test/metadata.csv") as f:
        names = [r["file_name"] for r in csv.DictReader(f)]
    clean, _ = sf.read(f"{root}/test/{names[0]}")
    noisy, _ = sf.read(f"{root}/test_noisy/{names[0]}")
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert 9.5 < snr < 10.5
    from speechkit.data.demo_corpus import plan

    assert not set(shifted.demo.shifted_voices) & set(shifted.demo.voices)
    assert {v for _, _, v, _, _ in plan(base)} <= set(base.demo.voices)

    run_dir, _ = asr_demo_run  # evaluate.py scores each split like any other
    done = run_cli("evaluate.py", f"model_dir={run_dir / 'model'}", "dataset=demo_en_shifted", *SMALL_DEMO,
                   "split=test_noisy", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo_en_shifted/test_noisy: WER" in done.stdout and "scored 6 utterances" in done.stdout
    refused = run_cli("evaluate.py", "model_dir=/nowhere", "dataset=demo_en_shifted",
                      "dataset.demo.shifted_voices=[en-us]", f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "speechkit: config error: dataset.demo.shifted_voices=['en-us'] is not allowed")
