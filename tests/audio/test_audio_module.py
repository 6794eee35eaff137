"""A user's own ``nn.Module`` on waveforms, through
:func:`sktransfer.backbones.waveform_backbone`: embedded, fine-tuned, pickled."""

import io

import joblib
import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer
from sktransfer.inputs.audio import resample
from sktransfer.backbones import waveform_backbone

from .tiny import noise, tone

pytest.importorskip("soxr")


class WaveNet(nn.Module):
    """What a user writes: a float32 batch of waveforms (B, samples) -> (B, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, kernel_size=40, stride=20)

    def forward(self, waveforms):
        return self.conv(waveforms.unsqueeze(1)).relu().mean(2)


def sounds(n):
    """Tones and noise at 8 kHz, of several lengths (so batches would pad)."""
    return [tone(300 + 40 * i, 0.1 + 0.02 * (i % 3), rate=8000) if i % 2 == 0
            else noise(0.1 + 0.02 * (i % 3), rate=8000, seed=i) for i in range(n)]


def test_a_users_module_embeds_each_clip_as_given_alone():
    torch.manual_seed(0)
    net = WaveNet()
    X = sounds(9)
    pft = PretrainedFeatureTransformer(waveform_backbone(net, sampling_rate=16000),
                                       sampling_rate=8000, batch_size=4, device="cpu").fit(X)
    assert pft.backbone_.modality == "audio" and pft.n_features_out_ == 8
    with torch.no_grad():
        expected = np.vstack([net(torch.from_numpy(resample(x, 8000, 16000))[None]).numpy()
                              for x in X])
    # Resampled to the module's rate, and never padded: each clip as if alone.
    np.testing.assert_allclose(pft.transform(X), expected, atol=1e-5)
    # The ONNX graph takes every clip length (its samples axis is dynamic).
    np.testing.assert_allclose(pft.set_params(runtime="onnx").transform(X), expected,
                               atol=1e-4)


@pytest.mark.parametrize("pooling", ["max", "cls"])
def test_a_pooling_a_users_module_cannot_apply_is_refused_by_name(pooling):
    # Its forward output is its embedding: "max" or "cls" would be ignored.
    pft = PretrainedFeatureTransformer(waveform_backbone(WaveNet, sampling_rate=16000),
                                       sampling_rate=8000, pooling=pooling, device="cpu")
    with pytest.raises(ValueError, match=f"pooling='{pooling}' has nothing to pool in "
                                         "module:WaveNet"):
        pft.fit(sounds(2))
    for kept in ("auto", "avg"):
        assert pft.set_params(pooling=kept).fit(sounds(2)).n_features_out_ == 8


def test_a_users_module_fine_tunes_and_pickles():
    X, y = sounds(12), np.arange(12) % 2
    clf = FineTunedClassifier(waveform_backbone(WaveNet, sampling_rate=16000),
                              sampling_rate=8000, max_epochs=4, lr=0.05, batch_size=4,
                              random_state=0, device="cpu").fit(X, y)
    losses = clf.history_[:, "train_loss"]
    assert losses[-1] < losses[0]
    proba = clf.predict_proba(X)
    buffer = io.BytesIO()
    joblib.dump(clf, buffer)
    buffer.seek(0)
    np.testing.assert_allclose(joblib.load(buffer).predict_proba(X), proba, atol=1e-6)
    # a factory rebuilds the module for weights=None (a study's "scratch")
    scratch = FineTunedClassifier(waveform_backbone(WaveNet, sampling_rate=16000),
                                  weights=None, sampling_rate=8000, max_epochs=1,
                                  random_state=0, device="cpu").fit(X, y)
    assert scratch.predict(X).shape == (12,)
