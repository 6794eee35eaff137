"""Audio beyond transform: fine-tuning, the feature cache, pickles and saved files."""

import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

from .tiny import RATE, build, noise, tone

pytest.importorskip("soundfile")
pytest.importorskip("soxr")


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory):
    return build("wav2vec2-group", tmp_path_factory.mktemp("w2v") / "model")


def _data(n=12):
    X = [tone(250 + 20 * i, 0.2) if i % 2 == 0 else noise(0.2, seed=i) for i in range(n)]
    return X, np.array([i % 2 for i in range(n)])


def test_fine_tuning_trains_and_keeps_the_feature_encoder_frozen(wav2vec2):
    X, y = _data()
    clf = FineTunedClassifier(f"hf:{wav2vec2}", sampling_rate=RATE, max_epochs=3, lr=1e-3,
                              batch_size=4, random_state=0)
    before = {k: v.clone() for k, v in
              sktransfer.load_backbone(f"hf:{wav2vec2}").module.state_dict().items()}
    clf.fit(X, y)
    after = clf.backbone_.module.state_dict()
    assert clf.backbone_.param_groups[0][0] == "model.feature_extractor"
    conv = [k for k in before if k.startswith("model.feature_extractor.")]
    rest = [k for k in before if k.startswith("model.encoder.layers.")]
    assert all(torch.equal(before[k], after[k]) for k in conv)  # freeze="auto"
    assert any(not torch.equal(before[k], after[k]) for k in rest)
    losses = clf.history_[:, "train_loss"]
    assert losses[-1] < losses[0]
    assert clf.predict(X).shape == (len(X),)
    # freeze="none" trains the feature encoder too
    full = FineTunedClassifier(f"hf:{wav2vec2}", sampling_rate=RATE, freeze="none",
                               max_epochs=1, lr=1e-3, batch_size=4, random_state=0).fit(X, y)
    moved = full.backbone_.module.state_dict()
    assert any(not torch.equal(before[k], moved[k]) for k in conv)


def test_feature_cache_keys_on_content_and_rate(wav2vec2, tmp_path):
    X, _ = _data(4)
    cached = PretrainedFeatureTransformer(f"hf:{wav2vec2}", sampling_rate=RATE,
                                          cache=str(tmp_path / "cache"))
    plain = PretrainedFeatureTransformer(f"hf:{wav2vec2}", sampling_rate=RATE).fit(X)
    first = cached.fit_transform(X)
    np.testing.assert_allclose(first, plain.transform(X), atol=1e-6)
    np.testing.assert_array_equal(cached.transform(X), first)
    # the same numbers stated at another rate are another sound
    other = PretrainedFeatureTransformer(f"hf:{wav2vec2}", sampling_rate=8000,
                                         cache=str(tmp_path / "cache")).fit(X)
    np.testing.assert_allclose(other.transform(X), PretrainedFeatureTransformer(
        f"hf:{wav2vec2}", sampling_rate=8000).fit(X).transform(X), atol=1e-6)
    assert not np.allclose(other.transform(X), first)


def test_files_through_the_cache(wav2vec2, tmp_path):
    import soundfile as sf

    paths = []
    for i, clip in enumerate(_data(3)[0]):
        paths.append(str(tmp_path / f"{i}.flac"))
        sf.write(paths[-1], clip, 22050 if i else RATE)
    cached = PretrainedFeatureTransformer(f"hf:{wav2vec2}", cache=str(tmp_path / "c"))
    plain = PretrainedFeatureTransformer(f"hf:{wav2vec2}").fit(paths)
    np.testing.assert_allclose(cached.fit_transform(paths), plain.transform(paths), atol=1e-6)
    np.testing.assert_allclose(cached.transform(paths), plain.transform(paths), atol=1e-6)


def test_joblib_and_saved_files_reload_offline_in_a_fresh_process(wav2vec2, tmp_path):
    import shutil

    X, y = _data(6)
    model_dir = tmp_path / "copy"
    shutil.copytree(wav2vec2, model_dir)
    pft = PretrainedFeatureTransformer(f"hf:{model_dir}", sampling_rate=RATE,
                                       layers=["model.encoder.layers.0"]).fit(X)
    clf = FineTunedClassifier(f"hf:{model_dir}", sampling_rate=RATE, max_epochs=1,
                              batch_size=4, random_state=0).fit(X, y)
    np.save(tmp_path / "X.npy", np.stack([x[:3200] for x in X]))
    np.save(tmp_path / "pft.npy", pft.transform([x[:3200] for x in X]))
    np.save(tmp_path / "clf.npy", clf.predict_proba([x[:3200] for x in X]))
    joblib.dump(pft, tmp_path / "pft.joblib")
    sktransfer.save(clf, str(tmp_path / "clf.skt"))
    shutil.rmtree(model_dir)  # nothing may be read from the original directory
    script = f"""
import joblib, numpy as np, sktransfer
d = {str(tmp_path)!r}
X = np.load(d + "/X.npy")
pft = joblib.load(d + "/pft.joblib")
clf = sktransfer.load(d + "/clf.skt")
np.testing.assert_allclose(pft.transform(X), np.load(d + "/pft.npy"), atol=1e-5)
np.testing.assert_allclose(clf.predict_proba(X), np.load(d + "/clf.npy"), atol=1e-5)
print("ok")
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]
