"""Length-grouped batching and the CTC collator."""

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from speechkit.batching import CTCCollator, DurationBatchSampler


def fe():
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


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
    s = DurationBatchSampler(lengths, batch_size=10, seed=5)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(s) == 100
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[c].max() - lengths[c].min() for c in np.split(np.arange(1000), 100)])
    assert spread < random_spread / 5  # padding stays small


def test_sampler_is_deterministic_per_epoch_and_shuffles_across_epochs():
    lengths = np.arange(200)
    a, b = DurationBatchSampler(lengths, 8, seed=1), DurationBatchSampler(lengths, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_eval_sampler_is_sorted_and_stable():
    lengths = np.array([5, 50, 20, 40])
    assert list(DurationBatchSampler(lengths, 2, shuffle=False)) == [[1, 3], [2, 0]]


@pytest.mark.parametrize("n,batch_size,processes", [(23, 4, 2), (24, 5, 2), (101, 8, 3), (450, 4, 2)])
def test_accelerate_shards_cover_every_batch_of_every_epoch(n, batch_size, processes):
    """What `accelerator.prepare` does to our sampler under N processes (accelerate's own BatchSamplerShard): each
    process gets its own batches, together they cover every index of every epoch, every process gets as many
    batches as the sharded loader's length says, and set_epoch on our sampler reaches every shard."""
    from accelerate.data_loader import BatchSamplerShard

    lengths = np.random.default_rng(0).integers(1000, 5000, size=n)
    sampler = DurationBatchSampler(lengths, batch_size, seed=3)
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
