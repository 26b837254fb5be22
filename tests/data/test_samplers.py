"""Length-grouped batch samplers, and the collator every task shares (here with CTC's targets)."""

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from speechkit.data.samplers import ClipCountBatchSampler, DurationBatchSampler, batch_sampler, train_batch_sampler
from speechkit.models import ModelInputs
from speechkit.kinds.base import pad_labels
from speechkit.tasks.base import Collator


def fe():
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


def CTCCollator(feature_extractor, pass_attention_mask):  # noqa: N802
    """What speech recognition collates with: the family's inputs, label ids padded, the labels to the model."""
    return Collator(ModelInputs(feature_extractor, pass_attention_mask), pad_labels, labels_to_model=True)


def test_collator_pads_audio_with_mask_and_labels_with_minus_100():
    rng = np.random.default_rng(0)
    items = [{"input_values": rng.normal(size=n).astype(np.float32), "labels": labels, "index": i}
             for i, (n, labels) in enumerate([(1600, [1, 2, 3]), (800, [4]), (1200, [5, 6])])]
    batch = CTCCollator(fe(), pass_attention_mask=True)(items)
    assert batch["input_values"].shape == (3, 1600)
    assert batch["attention_mask"].tolist()[1] == [1] * 800 + [0] * 800
    assert torch.all(batch["input_values"][1, 800:] == 0)
    # each utterance normalised over its own samples only
    assert abs(float(batch["input_values"][1, :800].mean())) < 1e-3
    assert abs(float(batch["input_values"][1, :800].std()) - 1) < 1e-2
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100], [5, 6, -100]]
    assert batch["index"].tolist() == [0, 1, 2]
    assert (batch["audio_samples"], batch["padded_samples"]) == (3600, 4800)  # for the throughput figures


def test_collator_hides_mask_from_group_norm_models():
    items = [{"input_values": np.ones(400, np.float32), "labels": [1], "index": 0}]
    collator = CTCCollator(fe(), pass_attention_mask=False)
    inputs = collator.model_inputs(collator(items))
    assert set(inputs) == {"input_values", "labels"}
    assert set(CTCCollator(fe(), True).model_inputs(collator(items))) == {"input_values", "attention_mask", "labels"}


def test_collator_skips_unreadable_rows():
    c = CTCCollator(fe(), True)
    assert c([None, None]) is None
    assert c([None, {"input_values": np.ones(10, np.float32), "index": 3}])["index"].tolist() == [3]


def test_sampler_covers_every_index_once_and_groups_lengths():
    lengths = np.random.default_rng(1).integers(1000, 100000, size=1000)
    s = ClipCountBatchSampler(lengths, batch_size=10, seed=5)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(s) == 100
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[c].max() - lengths[c].min() for c in np.split(np.arange(1000), 100)])
    assert spread < random_spread / 5  # padding stays small


def test_a_duration_budget_over_a_fixed_window_is_a_clip_count_of_clips_as_drawn():
    """Whisper pads every clip to its window: 32 s of budget over a 4 s window is 8 clips a batch, taken as drawn
    (grouping them by duration saves the encoder nothing); trainer.group_by_length=true still groups them."""
    lengths = np.random.default_rng(2).integers(16000, 64000, size=400)
    random_spread = np.mean([lengths[c].max() - lengths[c].min() for c in np.split(np.arange(400), 50)])
    for group, grouped in ((None, False), (False, False), (True, True)):
        s = batch_sampler(lengths, batch_size=3, batch_duration_s=32.0, sampling_rate=16000, seed=1,
                          group_by_length=group, padded_to=64000)
        batches = list(s)
        assert isinstance(s, ClipCountBatchSampler) and {len(b) for b in batches} == {8}
        assert sorted(i for b in batches for i in b) == list(range(400))
        spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
        assert (spread < random_spread / 5) == grouped, (group, spread, random_spread)
    assert {len(b) for b in batch_sampler(lengths, 3, 2.0, 16000, 1, padded_to=64000)} == {1}  # at least one clip
    # clips padded to the batch's longest (no fixed window): grouped by default
    by_count = list(batch_sampler(lengths, 8, None, 16000, 1))
    assert np.mean([lengths[b].max() - lengths[b].min() for b in by_count]) < random_spread / 5


def test_sampler_is_deterministic_per_epoch_and_shuffles_across_epochs():
    lengths = np.arange(200)
    a, b = ClipCountBatchSampler(lengths, 8, seed=1), ClipCountBatchSampler(lengths, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_eval_sampler_is_sorted_and_stable():
    lengths = np.array([5, 50, 20, 40])
    assert list(ClipCountBatchSampler(lengths, 2, shuffle=False)) == [[1, 3], [2, 0]]


@pytest.mark.parametrize("kind", ["clips", "duration"])
@pytest.mark.parametrize("n,batch_size,processes", [(23, 4, 2), (24, 5, 2), (101, 8, 3), (450, 4, 2)])
def test_accelerate_shards_cover_every_batch_of_every_epoch(n, batch_size, processes, kind):
    """What `accelerator.prepare` does to our sampler under N processes (accelerate's own BatchSamplerShard): each
    process gets its own batches, together they cover every index of every epoch, every process gets as many
    batches as the sharded loader's length says, and set_epoch on our sampler reaches every shard."""
    from accelerate.data_loader import BatchSamplerShard

    lengths = np.random.default_rng(0).integers(1000, 5000, size=n)
    sampler = ClipCountBatchSampler(lengths, batch_size, seed=3) if kind == "clips" else \
        DurationBatchSampler(lengths, max_samples=batch_size * 3000, seed=3)
    shards = [BatchSamplerShard(sampler, processes, i) for i in range(processes)]
    seen_by_epoch = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        per_process = [list(shard) for shard in shards]
        assert all(len(batches) == len(shard) for batches, shard in zip(per_process, shards))
        assert len({len(batches) for batches in per_process}) == 1  # DDP needs the same number everywhere
        real = [b for b in sampler]
        # Round r gives process p the batch r * processes + p of the epoch (the last round padded with early rows).
        for p, batches in enumerate(per_process):
            for r, batch in enumerate(batches):
                k = r * processes + p
                if k < len(real):
                    assert batch[:len(real[k])] == real[k]
        covered = {i for batches in per_process for b in batches for i in b}
        assert covered == set(range(n))
        seen_by_epoch.append([b for batches in per_process for b in batches])
    assert seen_by_epoch[0] != seen_by_epoch[1]  # the epoch reached the shards: a new order


# ------------------------------------------------------------------------------ batches by duration
def _lengths(n=2000, seed=1):
    return np.random.default_rng(seed).integers(16000, 20 * 16000, size=n)  # 1-20 s at 16 kHz


def test_duration_batches_cover_every_clip_once_within_the_budget_with_little_padding():
    lengths = _lengths()
    budget = 60 * 16000
    s = DurationBatchSampler(lengths, max_samples=budget, seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)  # the same count every epoch: the trainer plans its steps on it
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) * lengths[b].max() <= budget for b in batches)  # padding counted
        real = sum(lengths[b].sum() for b in batches)
        padded = sum(len(b) * lengths[b].max() for b in batches)
        assert 1 - real / padded < 0.05
    sizes = [len(b) for b in batches]
    assert max(sizes) >= 2 * min(sizes)  # short clips make bigger batches


def test_duration_batches_are_deterministic_per_epoch_and_change_across_epochs():
    lengths = _lengths(500)
    a, b = DurationBatchSampler(lengths, 40 * 16000, seed=7), DurationBatchSampler(lengths, 40 * 16000, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    assert {tuple(sorted(x)) for x in second} != {tuple(sorted(x)) for x in first}  # new batches, not just a new order
    assert list(DurationBatchSampler(lengths, 40 * 16000, seed=8)) != first


def test_a_clip_longer_than_the_budget_gets_a_batch_of_its_own():
    s = DurationBatchSampler(np.array([100, 10, 10, 10, 10]), max_samples=40)
    assert sorted(map(sorted, s)) == [[0], [1, 2, 3, 4]]


def test_resuming_mid_epoch_replays_the_rest_of_the_epoch():
    """What a resumed run does: the same (seed, epoch) order, the batches already trained on skipped."""
    from accelerate import Accelerator

    lengths = _lengths(300)
    dataset = list(range(len(lengths)))
    accelerator = Accelerator(cpu=True)

    def loader():
        sampler = DurationBatchSampler(lengths, 30 * 16000, seed=3)
        prepared = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                                                   collate_fn=lambda xs: xs))
        prepared.set_epoch(2)  # as the trainer does: accelerate's loader sets its sampler's epoch when iterated
        sampler.set_epoch(2)
        return prepared

    full = list(loader())
    assert list(accelerator.skip_first_batches(loader(), 5)) == full[5:]
    assert full != [b for b in DurationBatchSampler(lengths, 30 * 16000, seed=3)]  # epoch 2 is not epoch 0


def test_batch_size_or_duration_from_the_trainer_config():
    lengths = _lengths(100)
    assert isinstance(train_batch_sampler(lengths, 8, None, 16000, 0).batches, ClipCountBatchSampler)
    by_duration = train_batch_sampler(lengths, 8, 45.0, 16000, 0)
    assert isinstance(by_duration.batches, DurationBatchSampler) and by_duration.batch_size is None  # for accelerate
    by_duration.set_epoch(3)
    batches = list(by_duration)
    assert all(epoch == 3 for b in batches for epoch, _ in b)  # every index tagged with its epoch
    rows = [[i for _, i in b] for b in batches]
    assert rows == list(by_duration.batches) and len(batches) == len(by_duration)
    assert all(len(b) * lengths[b].max() <= 45 * 16000 for b in rows)


def _classifier(model_overrides, tmp_path):
    """An audio-classification task with its model built as training builds it (random init, three labels)."""
    from omegaconf import OmegaConf

    from conftest import compose
    from speechkit.tasks import make_task

    cfg = OmegaConf.to_object(compose("train", ["experiment=demo_commands", *model_overrides,
                                                "trainer.batch_duration_s=8.0", f"run_dir={tmp_path}"]))
    task = make_task(cfg)
    task.labels, task.multi_label = ["down", "stop", "up"], False
    task.build_model(cfg.model, str(tmp_path))
    return task, cfg.trainer


def test_an_ast_classifier_is_budgeted_and_batched_by_its_window(tmp_path):
    """AST pads or cuts every clip to its window (ast_tiny: 128 frames of 10 ms, 1.28 s), whatever the task: the
    classification task's padded_to is that window, so 8 s of trainer.batch_duration_s is 6 clips a batch, taken
    as drawn, each batch fed 6 windows; a wav2vec2 classifier, fed clips padded to the batch's longest, keeps
    batches of 8 s of audio grouped by duration."""
    task, trainer = _classifier(["model=ast_tiny"], tmp_path / "ast")
    assert task.padded_to == task.inputs.window == 20480 == task.family.input_window(task.feature_extractor)
    lengths = np.random.default_rng(3).integers(4000, 20480, size=300)  # spoken words, all shorter than the window
    random_spread = np.mean([lengths[c].max() - lengths[c].min() for c in np.split(np.arange(300), 50)])
    sampler = train_batch_sampler(lengths, trainer.batch_size, trainer.batch_duration_s, task.sampling_rate,
                                  trainer.seed, trainer.group_by_length, task.padded_to)  # as the trainer calls it
    batches = [[i for _, i in b] for b in sampler]
    assert {len(b) for b in batches} == {6} and sorted(i for b in batches for i in b) == list(range(300))
    assert np.mean([lengths[b].max() - lengths[b].min() for b in batches]) > random_spread / 2  # as drawn
    items = [{"input_values": np.zeros(int(n), np.float32), "labels": 0, "index": i}
             for i, n in enumerate(lengths[batches[0]])]
    fed = task.collator(True).inputs([x["input_values"] for x in items])
    assert fed["padded_samples"] == 6 * 20480 <= trainer.batch_duration_s * task.sampling_rate

    task, trainer = _classifier(["model=tiny"], tmp_path / "wav2vec2")
    assert task.padded_to is None
    sampler = train_batch_sampler(lengths, trainer.batch_size, trainer.batch_duration_s, task.sampling_rate,
                                  trainer.seed, trainer.group_by_length, task.padded_to)
    assert isinstance(sampler.batches, DurationBatchSampler)
