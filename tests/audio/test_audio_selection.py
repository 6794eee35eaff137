"""Ranking backbones and the transfer study on a small synthetic sound task."""

import numpy as np
import pandas as pd
import pytest

from sktransfer import PretrainedFeatureTransformer, compare_transfer, rank_backbones

from .tiny import RATE, build, noise, tone

pytest.importorskip("soundfile")
pytest.importorskip("soxr")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Tones against noise, 12 short clips of two lengths, and two tiny models."""
    root = tmp_path_factory.mktemp("audio-selection")
    rng = np.random.RandomState(0)
    X = [tone(rng.uniform(200, 600), 0.1) if i % 2 == 0 else noise(0.08, seed=i)
         for i in range(12)]
    return X, np.arange(12) % 2, build("wav2vec2-layer", root / "w2v"), build("whisper",
                                                                            root / "whisper")


def test_rank_backbones_ranks_audio_models(task):
    X, y, w2v, whisper = task
    table = rank_backbones([f"hf:{w2v}", f"hf:{whisper}"], X, y, sampling_rate=RATE,
                           metrics=("logme", "knn"), cv=2, batch_size=8, device="cpu")
    assert isinstance(table, pd.DataFrame)
    assert set(table.index) == {f"hf:{w2v}", f"hf:{whisper}"}
    assert table["n_features"].tolist() == [32, 32] and table.notna().all().all()
    # a transformer given as the candidate keeps its own rate and layers
    layered = PretrainedFeatureTransformer(f"hf:{w2v}", sampling_rate=RATE,
                                           layers=["model.encoder.layers.0"], device="cpu")
    assert rank_backbones([layered], X, y, metrics="knn", rank_by="knn",
                          cv=2)["n_features"].tolist() == [32]
    with pytest.raises(ValueError, match="sampling_rate="):
        rank_backbones([f"hf:{w2v}"], X, y, metrics="knn", rank_by="knn", cv=2)


def test_compare_transfer_studies_an_audio_backbone(task):
    X, y, w2v, _ = task
    report = compare_transfer(X, y, f"hf:{w2v}", methods=["scratch", "linear_probe"], cv=2,
                              estimator_params={"sampling_rate": RATE, "max_epochs": 1,
                                                "batch_size": 8, "device": "cpu"},
                              random_state=0)
    assert list(report.summary.index) == ["scratch", "linear_probe"]
    assert report.summary.loc["scratch", "verdict"] == "baseline"
    assert len(report.results) == 4 and report.results["score"].between(0, 1).all()
