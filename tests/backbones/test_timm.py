import numpy as np
import pytest
import timm
import torch

from sktransfer import PretrainedFeatureTransformer, load_backbone


def test_timm_model_embeds_small_images(digits):
    pft = PretrainedFeatureTransformer("timm:resnet18", weights=None, image_size=32,
                                       random_state=0)
    out = pft.fit_transform(digits[0][:3])
    assert out.shape == (3, 512) and np.isfinite(out).all()
    # timm's own group_matcher gives the layer groups, stem first
    assert pft.backbone_.layer_names[0] == "bn1"
    assert "layer4.1" in pft.backbone_.layer_names


def test_preprocessing_comes_from_pretrained_cfg():
    bb = load_backbone("timm:resnet18", weights=None)
    cfg = timm.data.resolve_model_data_config(bb.module)
    assert bb.preprocess.crop_size == cfg["input_size"][-1]
    assert bb.preprocess.resize_size == int(cfg["input_size"][-1] / cfg["crop_pct"])
    assert bb.preprocess.interpolation == cfg["interpolation"]
    assert tuple(bb.preprocess.mean) == tuple(cfg["mean"])


def test_local_weight_file_with_classifier_loads(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18_digits.pth"
    torch.save(full.state_dict(), path)
    bb = load_backbone("timm:resnet18", weights=str(path))
    assert torch.equal(bb.module.conv1.weight, full.conv1.weight)


def test_missing_pretrained_weights_name_the_hub_entry():
    with pytest.raises(OSError, match="timm/resnet18.*weights='/path/to/weights.pth'"):
        load_backbone("timm:resnet18", weights="DEFAULT")


def test_unknown_timm_model_is_named():
    with pytest.raises(ValueError, match="timm has no model 'resnet_nope'"):
        load_backbone("timm:resnet_nope", weights=None)
