"""``image_size`` builds vision transformers at that size, timm's and Hugging Face's.

All offline: timm models are random or read from state dicts written here,
and the Hugging Face ViT is a tiny random one saved with its processor.
"""

import pickle

import numpy as np
import pytest
import torch

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer, load_backbone

timm = pytest.importorskip("timm")

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def images():
    """Twelve uint8 RGB images of 32 x 32, two classes."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 2


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A 224-px ViT with a 10-class head, random weights, saved as a state dict."""
    torch.manual_seed(0)
    full = timm.create_model(VIT, pretrained=False, num_classes=10)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.pth"
    torch.save(full.state_dict(), path)
    return str(path), full.state_dict()


def test_file_weights_are_resampled_to_image_size(vit_file):
    path, saved = vit_file
    model = load_backbone(f"timm:{VIT}", weights=path, image_size=32).module
    width = saved["cls_token"].shape[-1]
    # one class token and the (32 / 16) ** 2 patches of the new grid
    assert model.pos_embed.shape == (1, 1 + (32 // 16) ** 2, width)
    expected = timm.layers.resample_abs_pos_embed(saved["pos_embed"], [2, 2],
                                                  num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    state = model.state_dict()
    for key in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "blocks.11.mlp.fc2.weight", "norm.weight"):
        assert torch.equal(state[key], saved[key]), key
    assert "state_dict" not in model.pretrained_cfg  # no second copy of the old weights
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, width)


def test_file_that_does_not_fit_is_still_named(vit_file, tmp_path):
    state = dict(vit_file[1], **{"norm.weight": torch.ones(7)})
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit VisionTransformer.*norm.weight: .7,"):
        load_backbone(f"timm:{VIT}", weights=str(path), image_size=32)


def test_cnns_and_the_native_size_build_as_registered():
    assert load_backbone(f"timm:{VIT}", weights=None, image_size=224).module.pos_embed.shape[1] \
        == 197
    cnn = load_backbone("timm:resnet18", weights=None, image_size=32)
    assert cnn.preprocess.crop_size == 32
    assert cnn.module(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_feature_transformer_embeds_at_image_size_and_pickles(images):
    X, _ = images
    pft = PretrainedFeatureTransformer(f"timm:{VIT}", weights=None, image_size=32,
                                       random_state=0)
    out = pft.fit_transform(X)
    assert out.shape == (12, 192) and np.isfinite(out).all()
    # the copy is rebuilt at 32 px: its position embeddings fit the saved ones
    again = pickle.loads(pickle.dumps(pft))
    assert again.backbone_.module.pos_embed.shape == (1, 5, 192)
    np.testing.assert_allclose(again.transform(X), out, rtol=1e-5, atol=1e-5)


def test_fine_tuner_trains_at_image_size(images):
    X, y = images
    # one optimizer step: the point is that a 32-px ViT trains, not how well
    clf = FineTunedClassifier(f"timm:{VIT}", weights=None, image_size=32, max_epochs=1,
                              batch_size=12, validation_fraction=0, random_state=0).fit(X, y)
    assert clf.predict_proba(X).shape == (12, 2)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny Hugging Face ViT trained at 32 px (patches of 8), saved with its processor."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    folder = tmp_path_factory.mktemp("hf_vit")
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return f"hf:{folder}"


def test_hugging_face_vit_at_a_smaller_size(hf_vit, images):
    X, y = images
    pft = PretrainedFeatureTransformer(hf_vit, image_size=16).fit(X)
    assert pft.backbone_.preprocess.input_size == (16, 16)
    assert pft.backbone_.module.interpolate  # position embeddings interpolated in forward
    assert pft.transform(X).shape == (12, 32)
    clf = FineTunedClassifier(hf_vit, image_size=16, max_epochs=1, batch_size=6,
                              validation_fraction=0, random_state=0).fit(X, y)
    assert clf.predict(X).shape == (12,)


@pytest.mark.parametrize("img_size", [10**6, -32, "32", 32.0])
def test_a_stored_network_cannot_ask_for_any_grid_size(img_size):
    # a file names the size before its tensors are read: a crafted one is refused
    from sktransfer.backbones.timm import network_from_state

    with pytest.raises(ValueError, match="img_size"):
        network_from_state("vit_tiny_patch16_224", {"img_size": img_size})
