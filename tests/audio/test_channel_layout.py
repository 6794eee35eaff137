"""Multichannel clips in either layout: torchaudio's (channels, samples) and
soundfile's (samples, channels) give the same mono clip and the same embedding."""

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureTransformer
from sktransfer.inputs.audio import audio_samples

from .tiny import RATE, chirp, noise, tone

pytest.importorskip("soxr")


def stereo(seconds=0.5):
    """Two different channels, as (channels, samples)."""
    return np.stack([tone(440, seconds), chirp(200, 3000, seconds)])


def mono_clips(clips, max_duration=None):
    samples = audio_samples(clips, rate=RATE, target_rate=RATE, max_duration=max_duration)
    return samples, [samples.clip(i) for i in range(len(samples))]


@pytest.mark.parametrize("channels", [2, 6, 8])
def test_channels_first_clips_are_mixed_down_over_their_channels(channels):
    first = np.stack([noise(0.25, seed=s) for s in range(channels)])  # (channels, samples)
    samples, (a, b, c) = mono_clips([first, first.T.copy(), torch.from_numpy(first)])
    expected = first.mean(axis=0)
    assert a.shape == (first.shape[1],)
    np.testing.assert_allclose(a, expected, atol=1e-7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # Lengths (batches are sorted by them) count samples, not channels.
    assert samples.lengths().tolist() == [first.shape[1]] * 3


def test_truncation_cuts_samples_not_channels():
    clip = stereo(1.0)
    _, (cut_first, cut_last) = mono_clips([clip, clip.T], max_duration=0.25)
    assert cut_first.shape == cut_last.shape == (RATE // 4,)
    np.testing.assert_array_equal(cut_first, cut_last)
    np.testing.assert_allclose(cut_first, clip.mean(0)[:RATE // 4], atol=1e-7)


def test_samples_first_layouts_keep_their_meaning():
    # More than eight rows, or as many rows as columns: rows are samples.
    many = noise(0.01, seed=2)[:150].reshape(10, 15)
    square = noise(0.01, seed=3)[:16].reshape(4, 4)
    _, (a, b) = mono_clips([many, square])
    np.testing.assert_allclose(a, many.mean(axis=1), atol=1e-7)
    np.testing.assert_allclose(b, square.mean(axis=1), atol=1e-7)


def test_both_layouts_embed_alike(models):
    pft = PretrainedFeatureTransformer(f"hf:{models('wav2vec2-layer')}", sampling_rate=RATE)
    clip = stereo()
    first = pft.fit_transform([clip])
    np.testing.assert_array_equal(first, pft.transform([clip.T]))
    np.testing.assert_allclose(first, pft.transform([clip.mean(0)]), atol=1e-5)
