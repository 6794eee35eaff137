import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import PretrainedFeatureTransformer, load_backbone


def test_module_is_copied_not_modified():
    net = nn.Sequential(nn.Linear(4, 3))
    before = net[0].weight.detach().clone()
    bb = load_backbone(net, weights=None)
    assert bb.modality == "tensor" and bb.module is not net
    assert torch.equal(net[0].weight, before)
    assert not torch.equal(bb.module[0].weight, before)  # re-initialized copy


def test_factory_and_bad_factory():
    bb = load_backbone(lambda: nn.Linear(3, 2))
    assert isinstance(bb.module, nn.Linear)
    with pytest.raises(TypeError, match="returned a int, not a torch.nn.Module"):
        load_backbone(lambda: 3)


def test_module_weights_from_a_file(tmp_path):
    source = nn.Linear(3, 2)
    path = tmp_path / "linear.pt"
    torch.save(source.state_dict(), path)
    bb = load_backbone(nn.Linear(3, 2), weights=str(path))
    assert torch.equal(bb.module.weight, source.weight)


def test_fitted_estimator_is_a_backbone():
    X = np.random.RandomState(0).rand(5, 4).astype(np.float32)
    first = PretrainedFeatureTransformer(nn.Linear(4, 3)).fit(X)
    second = PretrainedFeatureTransformer(first).fit(X)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    assert second.backbone_.module is not first.backbone_.module


def test_unfitted_estimator_as_backbone_is_an_error():
    with pytest.raises(ValueError, match="not fitted"):
        load_backbone(PretrainedFeatureTransformer(nn.Linear(4, 3)))


@pytest.mark.parametrize("spec", ["resnet18", "keras:vgg16", "torchvision:", 3.5])
def test_unknown_spec_lists_what_is_accepted(spec):
    with pytest.raises((ValueError, TypeError), match="torchvision:<name>.*hf:<model id"):
        load_backbone(spec)
