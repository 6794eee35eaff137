"""``set_params`` after ``fit``: never an error, and never a transform whose width
disagrees with ``n_features_out_`` and ``get_feature_names_out()``."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

import sktransfer
from sktransfer import PretrainedFeatureTransformer

from conftest import tiny_cnn

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).rand(6, 3, 12, 12).astype(np.float32)


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    """A tiny random ViT saved with its image processor."""
    import transformers as T

    folder = str(tmp_path_factory.mktemp("vit"))
    torch.manual_seed(0)
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, image_size=32, patch_size=8)
    T.ViTModel(config).save_pretrained(folder)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def agrees(pft, out):
    return out.shape[1] == pft.n_features_out_ == len(pft.get_feature_names_out())


def refused(pft, X, param):
    """``transform`` refuses with an error that names the parameter and says to fit again."""
    with pytest.raises(NotFittedError, match=rf"{param}=.*call fit"):
        pft.transform(X)
    # A lazy Dask result too, before its metadata could be wrong.
    with pytest.raises(NotFittedError, match="call fit"):
        pft.transform(da.from_array(X, chunks=3))


def test_a_change_of_layers_after_fit_asks_to_fit_again(images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), layers=["1"], device="cpu").fit(images)
    assert agrees(pft, pft.transform(images)) and pft.n_features_out_ == 8

    assert pft.set_params(layers=["1", "4"]) is pft  # never raises
    refused(pft, images, "layers")
    assert agrees(pft, pft.fit(images).transform(images)) and pft.n_features_out_ == 24

    pft.set_params(layers=None)
    refused(pft, images, "layers")
    assert agrees(pft, pft.fit(images).transform(images)) and pft.n_features_out_ == 16
    # back to what was fitted: transform works again without a fit
    pft.set_params(layers=["4"])
    refused(pft, images, "layers")
    pft.set_params(layers=None)
    assert agrees(pft, pft.transform(images))


def test_a_pooling_that_widens_the_layers_asks_to_fit_again(vit_path):
    images = np.random.RandomState(1).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    pft = PretrainedFeatureTransformer(f"hf:{vit_path}", layers=["model.layers.1"],
                                       device="cpu").fit(images)
    assert pft.n_features_out_ == 32
    # A pooling of the same width applies at once (the layers are pooled per call).
    maxed = pft.set_params(pooling="max").transform(images)
    assert agrees(pft, maxed) and not np.allclose(maxed, pft.set_params(pooling="avg")
                                                  .transform(images))
    pft.set_params(pooling="cls+avg")  # the class token and the patch mean: twice as wide
    refused(pft, images, "pooling")
    assert agrees(pft, pft.fit(images).transform(images)) and pft.n_features_out_ == 64


def test_the_pooling_of_the_embedding_is_set_at_fit(vit_path):
    images = np.random.RandomState(1).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    pft = PretrainedFeatureTransformer(f"hf:{vit_path}", device="cpu").fit(images)
    pft.set_params(pooling="cls+avg")
    refused(pft, images, "pooling")
    widened = pft.fit(images).transform(images)
    assert agrees(pft, widened) and pft.n_features_out_ == 64
    # a change of the same width would be ignored by the fitted network: refused too
    pft.set_params(pooling="cls")
    refused(pft, images, "pooling")


def test_the_check_survives_saving(images, tmp_path):
    pft = PretrainedFeatureTransformer(tiny_cnn(), layers=["1"], device="cpu").fit(images)
    sktransfer.save(pft, tmp_path / "m.skt")
    loaded = sktransfer.load(tmp_path / "m.skt")
    np.testing.assert_array_equal(loaded.transform(images), pft.transform(images))
    loaded.set_params(layers=["4"])
    refused(loaded, images, "layers")
