import os

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from sktransfer import PretrainedFeatureTransformer, load_backbone


@pytest.mark.parametrize("name, dim", [
    ("resnet18", 512), ("resnet50", 2048), ("vgg16", 4096), ("efficientnet_b0", 1280),
])
def test_architectures_give_their_embedding_width(name, dim, digits):
    X = digits[0][:2]
    out = PretrainedFeatureTransformer(f"torchvision:{name}", weights=None, image_size=32,
                                       random_state=0).fit_transform(X)
    assert out.shape == (2, dim) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_vit_at_its_native_size():
    bb = load_backbone("torchvision:vit_b_16", weights=None)
    assert bb.out_dim == 768 and bb.preprocess.crop_size == 224
    x = torch.zeros(1, 3, 224, 224)
    with torch.inference_mode():
        assert bb.module.eval()(x).shape == (1, 768)


def test_preprocessing_comes_from_the_weights_config():
    bb = load_backbone("torchvision:resnet18", weights=None)
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert bb.preprocess.crop_size == preset.crop_size[0]
    assert bb.preprocess.resize_size == preset.resize_size[0]
    assert bb.preprocess.mean == preset.mean and bb.preprocess.std == preset.std
    small = load_backbone("torchvision:resnet18", weights=None, image_size=64)
    assert (small.preprocess.crop_size, small.preprocess.resize_size) == (64, 73)


def test_transform_equals_a_hand_written_forward(digits):
    images = np.repeat(digits[0][:5, :, :, None], 3, axis=-1)
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=40,
                                       batch_size=2, random_state=0).fit(images)
    model = pft.backbone_.module.eval()
    preset = torchvision.transforms.v2.Compose([
        torchvision.transforms.v2.Resize(46, antialias=True),
        torchvision.transforms.v2.CenterCrop(40),
        torchvision.transforms.v2.ToDtype(torch.float32, scale=True),
        torchvision.transforms.v2.Normalize(pft.backbone_.preprocess.mean,
                                            pft.backbone_.preprocess.std),
    ])
    with torch.inference_mode():
        expected = model(preset(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(pft.transform(images), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def test_default_weights_load_through_the_torch_hub_cache(hub_dir):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    hub_dir.mkdir(parents=True)
    torch.save(reference.state_dict(), hub_dir / os.path.basename(weights.url))
    bb = load_backbone("torchvision:resnet18", weights="DEFAULT")
    assert torch.equal(bb.module.conv1.weight, reference.conv1.weight)
    assert bb.weights_id == str(weights)
    tagged = load_backbone("torchvision:resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(tagged.module.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_missing_pretrained_weights_say_where_and_what_to_do(hub_dir):
    with pytest.raises(OSError) as info:
        load_backbone("torchvision:resnet18", weights="DEFAULT")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(hub_dir) in message
    assert "weights='/path/to/weights.pth'" in message


@pytest.mark.parametrize("save", ["full_pth", "headless_pt", "safetensors"])
def test_local_weight_files_load(save, tmp_path):
    torch.manual_seed(1)
    full = torchvision.models.resnet18()
    if save == "full_pth":
        path = tmp_path / "resnet18.pth"
        torch.save(full.state_dict(), path)
    elif save == "headless_pt":
        path = tmp_path / "trunk.pt"
        full.fc = torch.nn.Identity()
        torch.save({"state_dict": full.state_dict()}, path)
    else:
        path = tmp_path / "resnet18.safetensors"
        save_file(full.state_dict(), str(path))
    bb = load_backbone("torchvision:resnet18", weights=str(path))
    assert torch.equal(bb.module.layer1[0].conv1.weight, full.layer1[0].conv1.weight)
    assert bb.weights_id.startswith("file:")


def test_weight_file_of_another_model_is_named(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="vgg.pth.*unexpected keys"):
        load_backbone("torchvision:resnet18", weights=str(path))


def test_weight_files_are_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        load_backbone("torchvision:resnet18", weights=str(path))


def test_unknown_model_and_tag_are_named():
    with pytest.raises(ValueError, match="no classification model 'resnet19'.*resnet18"):
        load_backbone("torchvision:resnet19")
    with pytest.raises(ValueError, match="no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        load_backbone("torchvision:resnet18", weights="IMAGENET9K")
