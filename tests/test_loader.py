from __future__ import annotations

import math
import random

import numpy as np
import pytest
import soundfile as sf

from speechtl.data import AudioDataset, DurationBatchSampler, Utterance, collate_audio
from speechtl.errors import SpeechtlError


@pytest.fixture
def two_part_wav(tmp_path):
    """2 s at 16 kHz: silence for the first second, a 440 Hz tone for the second."""
    rate = 16000
    t = np.arange(rate) / rate
    wav = np.concatenate([np.zeros(rate), 0.5 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    path = tmp_path / "two.flac"
    sf.write(path, wav, rate)
    return path


def _utt(path, **kw) -> Utterance:
    return Utterance(id=kw.pop("id", "u"), audio=str(path), text="hello", speaker="s", accent="gb", **kw)


def test_dataset_item_and_segment(two_part_wav):
    ds = AudioDataset([_utt(two_part_wav), _utt(two_part_wav, id="seg", offset=1.0, duration=0.5)], 16000)
    assert len(ds) == 2
    full = ds[0]
    assert set(full) == {"id", "audio", "text", "accent", "speaker"}
    assert full["audio"].dtype == np.float32 and full["audio"].shape == (32000,)
    seg = ds[1]["audio"]
    assert seg.shape == (8000,) and np.abs(seg).max() > 0.4  # from the tone half only
    assert ds[1]["id"] == "seg" and ds[1]["accent"] == "gb"


@pytest.mark.slow  # the first resample imports librosa and scipy.signal (seconds on a busy machine)
def test_speed_perturb_changes_length(two_part_wav):
    u = _utt(two_part_wav, offset=1.0, duration=1.0)
    fast = AudioDataset([u], 16000, speed_perturb=[1.25])[0]["audio"]
    assert abs(len(fast) - 16000 / 1.25) <= 2
    same = AudioDataset([u], 16000, speed_perturb=[1.0])[0]["audio"]
    assert same.shape == (16000,)


def test_noise_is_mixed_at_the_snr_and_seeded(two_part_wav):
    u = _utt(two_part_wav, offset=1.0, duration=1.0)
    clean = AudioDataset([u], 16000)[0]["audio"]
    ds = AudioDataset([u], 16000, noise_snr=10.0, seed=3)
    noisy = ds[0]["audio"]
    noise = noisy - clean
    snr = 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.01
    assert np.array_equal(noisy, ds[0]["audio"])  # same seed, epoch, index -> same draw
    ds.set_epoch(1)
    assert not np.array_equal(noisy, ds[0]["audio"])
    with pytest.raises(SpeechtlError):
        AudioDataset([u], speed_perturb=[0.0])


def test_collate_pads_and_keeps_lengths(two_part_wav):
    ds = AudioDataset([_utt(two_part_wav), _utt(two_part_wav, id="s", offset=1.0, duration=0.25)], 16000)
    batch = collate_audio([ds[0], ds[1]])
    assert tuple(batch["audio"].shape) == (2, 32000)
    assert batch["lengths"].tolist() == [32000, 4000]
    assert float(batch["audio"][1, 4000:].abs().sum()) == 0.0
    assert batch["id"] == ["u", "s"]


def _durations(n: int = 300, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 12.0), 3) for _ in range(n)]


def test_batches_respect_cap_and_cover_everything():
    durs = _durations()
    sampler = DurationBatchSampler(durs, max_seconds=30.0, seed=1, bucket_size=50)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(sum(durs[i] for i in b) <= 30.0 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(durs)))
    # Bucketing keeps lengths inside a batch close (sorted within 50-item buckets).
    spreads = [max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches if len(b) > 1]
    assert np.mean(spreads) < 3.0


def test_padded_cap():
    durs = _durations()
    for b in DurationBatchSampler(durs, max_seconds=30.0, padded=True):
        assert max(durs[i] for i in b) * len(b) <= 30.0 or len(b) == 1


def test_long_item_gets_its_own_batch_with_warning():
    durs = [1.0] * 10 + [50.0]
    with pytest.warns(UserWarning, match="longer than max_seconds"):
        sampler = DurationBatchSampler(durs, max_seconds=5.0)
    batches = list(sampler)
    assert [10] in batches
    assert all(sum(durs[i] for i in b) <= 5.0 for b in batches if b != [10])


def test_ranks_get_disjoint_batches_and_equal_counts():
    durs = _durations(301)
    r0 = DurationBatchSampler(durs, max_seconds=25.0, seed=2, num_replicas=2, rank=0)
    r1 = DurationBatchSampler(durs, max_seconds=25.0, seed=2, num_replicas=2, rank=1)
    b0, b1 = list(r0), list(r1)
    assert len(b0) == len(b1) == len(r0) == len(r1)
    s0, s1 = {i for b in b0 for i in b}, {i for b in b1 for i in b}
    assert not s0 & s1
    assert s0 | s1 == set(range(len(durs)))
    n_all = len(DurationBatchSampler(durs, max_seconds=25.0, seed=2)._all_batches())
    assert len(b0) == math.ceil(n_all / 2)


def test_same_seed_same_order_and_epochs_differ():
    durs = _durations()
    a = list(DurationBatchSampler(durs, max_seconds=20.0, seed=5))
    b = list(DurationBatchSampler(durs, max_seconds=20.0, seed=5))
    assert a == b
    c = DurationBatchSampler(durs, max_seconds=20.0, seed=5)
    c.set_epoch(1)
    assert list(c) != a
    assert list(DurationBatchSampler(durs, max_seconds=20.0, seed=6)) != a
    fixed = list(DurationBatchSampler(durs, max_seconds=20.0, shuffle=False))
    assert fixed == list(DurationBatchSampler(durs, max_seconds=20.0, shuffle=False, seed=9))


def test_resume_mid_epoch_reproduces_the_remaining_batches():
    durs = _durations()
    full = DurationBatchSampler(durs, max_seconds=20.0, seed=7, num_replicas=2, rank=1)
    full.set_epoch(3)
    expected = list(full)

    first = DurationBatchSampler(durs, max_seconds=20.0, seed=7, num_replicas=2, rank=1)
    first.set_epoch(3)
    it = iter(first)
    seen = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4

    resumed = DurationBatchSampler(durs, max_seconds=20.0, seed=7, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the usual epoch-loop call keeps the position within the same epoch
    assert seen + list(resumed) == expected
    assert list(resumed) == expected  # the next pass over the epoch starts from the beginning
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(resumed)

    other = DurationBatchSampler(durs, max_seconds=20.0, seed=8, num_replicas=2, rank=1)
    with pytest.raises(SpeechtlError, match="seed"):
        other.load_state_dict(state)


def test_sampler_rejects_bad_input():
    with pytest.raises(SpeechtlError):
        DurationBatchSampler([1.0, None], max_seconds=10)
    with pytest.raises(SpeechtlError):
        DurationBatchSampler([1.0], max_seconds=10, num_replicas=2, rank=2)
    with pytest.raises(SpeechtlError):
        DurationBatchSampler([], max_seconds=10)


def test_augmentation_from_the_config_and_fresh_each_epoch_in_training(two_part_wav):
    """speed_perturb / noise_snr in the data config reach the dataset, and the training loop's
    epoch stream draws new noise every epoch."""
    from torch.utils.data import DataLoader

    from speechtl.config import DataConfig
    from speechtl.data.loader import augmentation
    from speechtl.training import batch_stream

    assert augmentation(DataConfig()) == {"speed_perturb": None, "noise_snr": None}
    assert augmentation(DataConfig(speed_perturb=[0.9, 1.1], noise_snr=[10, 30])) == {
        "speed_perturb": [0.9, 1.1], "noise_snr": (10.0, 30.0)}
    assert augmentation(DataConfig(noise_snr=[20]))["noise_snr"] == 20.0
    for bad in ([30, 10], [1, 2, 3]):
        with pytest.raises(SpeechtlError, match="noise_snr"):
            augmentation(DataConfig(noise_snr=bad))

    u = _utt(two_part_wav, offset=1.0, duration=1.0)
    ds = AudioDataset([u], 16000, seed=0, **augmentation(DataConfig(noise_snr=[20])))
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_audio)
    stream = batch_stream(loader, epoch=0, skip=0)
    first, second = next(stream), next(stream)
    assert (first[0], second[0]) == (0, 1)
    assert not np.array_equal(first[3]["audio"].numpy(), second[3]["audio"].numpy())


def test_adapt_config_reads_augmentation_keys():
    from speechtl.config import load_config

    cfg = load_config(None, ["speed_perturb=0.9,1.0,1.1", "noise_snr=15,40"])
    assert cfg.data.speed_perturb == [0.9, 1.0, 1.1] and cfg.data.noise_snr == [15.0, 40.0]
