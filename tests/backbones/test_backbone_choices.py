"""What the backbone decides for the estimators: the ``weights=`` choice of
every source (one ``resolve_weights``), and how its embedding and its
chosen layers pool (``Backbone.set_pooling``, ``Backbone.layer_pooling``)."""

import os
import pathlib
import re

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer.backbones import POOLINGS, Backbone, load_backbone, waveform_backbone
from sktransfer.backbones.preprocess import TensorPreprocess
from sktransfer.backbones.weights import resolve_weights

# -- resolve_weights ------------------------------------------------------------------------


@pytest.mark.parametrize("weights, tags, kind", [
    ("DEFAULT", False, "default"),
    ("DEFAULT", True, "default"),
    (None, False, "random"),
    ("IMAGENET1K_V2", True, "tag"),
    ("w.pt", False, "file"),
    ("w.pth", True, "file"),
    ("w.bin", False, "file"),
    ("w.safetensors", False, "file"),
    (os.path.join("some", "dir", "weights"), False, "file"),
    (pathlib.Path("w.safetensors"), True, "file"),
])
def test_resolve_weights_tells_the_choices_apart(weights, tags, kind):
    resolved = resolve_weights(weights, tags=tags)
    assert resolved.kind == kind
    expected_id = {"random": "random", "file": f"file:{os.path.abspath(weights or '')}"}
    assert resolved.weights_id == expected_id.get(kind)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V2", "default", 5, pathlib.Path("w.ckpt")])
def test_resolve_weights_refuses_the_rest_with_what_is_accepted(weights):
    with pytest.raises(ValueError) as info:
        resolve_weights(weights)
    assert str(info.value) == f"weights must be 'DEFAULT', None or a path; got {weights!r}"


def test_resolve_weights_with_tags_names_tags_and_takes_a_source_s_wording():
    with pytest.raises(ValueError, match=r"^weights must be 'DEFAULT', a tag, None or a path; "
                                         r"got 5$"):
        resolve_weights(5, tags=True)
    with pytest.raises(ValueError, match=r"^weights of X must be 'DEFAULT' or None; got 'a'$"):
        resolve_weights("a", what="weights of X", accepted="'DEFAULT' or None")


def test_each_source_refuses_weights_in_its_own_words():
    with pytest.raises(ValueError, match=r"^weights for a module backbone must be 'DEFAULT' "
                                         r"\(keep its weights\), None \(re-initialize\) or a "
                                         r"path to a state dict file; got 'IMAGENET1K_V1'$"):
        load_backbone(nn.Linear(2, 2), weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"^weights must be 'DEFAULT', a tag, None or a path; "
                                         r"got 3$"):
        load_backbone("torchvision:resnet18", weights=3)
    with pytest.raises(ValueError, match=r"'resnet18' has no weights 'NOPE'"):
        load_backbone("torchvision:resnet18", weights="NOPE")


def test_hugging_face_sources_refuse_a_tag(tiny_bert_path):
    with pytest.raises(ValueError, match=r"^weights must be 'DEFAULT', None or a path; "
                                         r"got 'IMAGENET1K_V1'$"):
        load_backbone(f"hf:{tiny_bert_path}", weights="IMAGENET1K_V1")


def test_module_weights_keep_their_identities(tmp_path):
    path = str(tmp_path / "w.pt")
    torch.save(nn.Linear(2, 2).state_dict(), path)
    ids = [load_backbone(nn.Linear(2, 2), weights=w).weights_id for w in ("DEFAULT", None, path)]
    assert ids == ["as-given", "random", f"file:{os.path.abspath(path)}"]


# -- Backbone.set_pooling -------------------------------------------------------------------


def test_a_module_backbone_cannot_change_its_pooling_and_says_what_it_takes():
    backbone = load_backbone(nn.Sequential(nn.Linear(4, 3), nn.Tanh()))
    for kept in ("auto", "avg", "mean"):
        backbone.set_pooling(kept)
    for pooling in ("max", "cls", "cls+avg"):
        with pytest.raises(ValueError, match=rf"pooling='{re.escape(pooling)}' has nothing "
                                             rf"to pool in module:Sequential.*pooling='avg'"):
            backbone.set_pooling(pooling)


def test_an_image_network_swaps_its_global_pool_or_names_the_choices():
    backbone = load_backbone("torchvision:resnet18", weights=None, image_size=32)
    with pytest.raises(ValueError, match="pooling='cls'.*torchvision:resnet18.*'auto', 'avg' "
                                         "or 'max'"):
        backbone.set_pooling("cls")
    assert isinstance(backbone.module.avgpool, nn.AdaptiveAvgPool2d)
    backbone.set_pooling("max")
    assert isinstance(backbone.module.avgpool, nn.AdaptiveMaxPool2d)


def test_a_waveform_module_keeps_its_own_output_and_refuses_other_poolings():
    # Its forward output is its embedding: a pooling it would ignore is refused.
    backbone = waveform_backbone(nn.Linear(8, 2), sampling_rate=8000)
    before = repr(backbone.module)
    kept = {"auto", "avg", "mean"} & set(POOLINGS)
    for pooling in POOLINGS:
        if pooling in kept:
            backbone.set_pooling(pooling)
        else:
            with pytest.raises(ValueError, match=re.escape(f"pooling='{pooling}' has nothing")):
                backbone.set_pooling(pooling)
    assert repr(backbone.module) == before
    assert kept >= {"auto", "avg"}


def test_a_text_encoder_pools_its_tokens_as_told(tiny_bert_path):
    backbone = load_backbone(f"hf:{tiny_bert_path}", weights=None)
    assert backbone.module.pooling == ("mean",)
    backbone.set_pooling("cls+avg")
    assert backbone.module.pooling == ("cls", "mean")
    with pytest.raises(ValueError, match="pooling for token states must be one of"):
        backbone.set_pooling("median")


def _tiny_vit_backbone():
    from transformers import ViTConfig, ViTModel

    from sktransfer.backbones.hf_vision import ImageEncoder

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16, image_size=16, patch_size=8)).eval()
    encoder = ImageEncoder(model, "cls", prefix_tokens=1)
    return Backbone(encoder, TensorPreprocess(), "image", "hf:tiny-vit", out_dim=8)


def test_an_image_transformer_pools_its_tokens_or_names_its_choices():
    backbone = _tiny_vit_backbone()
    backbone.set_pooling("cls+avg")
    assert backbone.module.pooling == "cls+avg"
    with pytest.raises(ValueError, match="pooling='lasttoken' does not apply to hf:tiny-vit.*"
                                         "'cls', 'avg', 'mean', 'max', 'cls\\+avg'"):
        backbone.set_pooling("lasttoken")


# -- Backbone.layer_pooling -----------------------------------------------------------------


def test_layer_pooling_of_a_module_pools_each_layer_side_by_side():
    backbone = load_backbone(nn.Sequential(nn.Linear(4, 3), nn.Tanh()))
    pool = backbone.layer_pooling(["0", "1"], "auto")
    outputs = {"0": torch.ones(2, 3), "1": torch.arange(24.0).reshape(2, 3, 2, 2)}
    pooled = pool(outputs, torch.zeros(2, 4))  # (B, F) as it is, (B, C, H, W) over space
    np.testing.assert_allclose(pooled[:, 3:], outputs["1"].flatten(2).mean(2))
    assert pooled.shape == (2, 6)


def test_layer_pooling_of_an_image_transformer_leaves_its_class_token_apart():
    backbone = _tiny_vit_backbone()
    tokens = torch.tensor([[[100.0], [1.0], [3.0]]])
    assert backbone.layer_pooling(["x"], "avg")({"x": tokens}, None).item() == 2.0
    assert backbone.layer_pooling(["x"], "cls+avg")({"x": tokens}, None).tolist() == [[100.0, 2.0]]
    # a module's token output: every token counts
    plain = load_backbone(nn.Linear(1, 1))
    assert plain.layer_pooling(["x"], "avg")({"x": tokens}, None).item() == pytest.approx(104 / 3)


def test_layer_pooling_masks_text_padding():
    backbone = load_backbone(nn.Linear(1, 1))
    tokens = torch.tensor([[[1.0], [3.0], [50.0]]])
    inputs = {"attention_mask": torch.tensor([[1, 1, 0]])}
    assert backbone.layer_pooling(["x"], "max")({"x": tokens}, inputs).item() == 3.0


def test_a_pooling_encoder_without_set_pooling_is_refused_when_defined():
    from sktransfer.backbones.pooling import PoolingEncoder

    with pytest.raises(TypeError, match="Forgetful is a PoolingEncoder without set_pooling"):
        class Forgetful(PoolingEncoder, nn.Module):
            pass

    class Pools(PoolingEncoder, nn.Module):
        def set_pooling(self, pooling, spec=None):
            self.pooling = pooling

    Pools().set_pooling("max")
