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


class Scaled(nn.Module):
    """A parameter on the root module, next to a child layer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(x) * self.scale


class ScaledWithReset(Scaled):
    def reset_parameters(self):
        nn.init.uniform_(self.scale, 0.5, 1.5)


class Holder(nn.Module):
    """A child module that holds a parameter and cannot re-initialize it."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3))


class Shifted(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.shift = Holder()

    def forward(self, x):
        return self.linear(x) + self.shift.offset


def changed(before, after):
    """Names of the parameters whose values differ between two modules."""
    old = dict(before.named_parameters())
    return sorted(name for name, p in after.named_parameters() if not torch.equal(p, old[name]))


def test_random_weights_reset_parameters_on_the_root_too():
    net = ScaledWithReset()
    bb = load_backbone(net, weights=None)
    assert changed(net, bb.module) == ["linear.bias", "linear.weight", "scale"]


@pytest.mark.parametrize("net, names", [
    (Scaled(), r"'scale' \(in Scaled\)"),
    (Shifted(), r"'shift.offset' \(in Holder\)"),
])
def test_random_weights_refuse_parameters_nothing_resets(net, names):
    with pytest.raises(ValueError, match=(
            rf"weights=None cannot re-initialize {names}.*define reset_parameters\(\).*"
            r"zero-argument factory")):
        load_backbone(net, weights=None)
    with pytest.raises(ValueError, match="cannot re-initialize"):
        PretrainedFeatureTransformer(net, weights=None).fit(np.ones((2, 3), np.float32))


def test_random_weights_from_a_factory_are_its_fresh_module():
    torch.manual_seed(0)
    first = load_backbone(Shifted, weights=None).module
    second = load_backbone(Shifted, weights=None).module
    assert changed(first, second) == ["linear.bias", "linear.weight"]  # offset: zeros, fresh


def test_random_weights_reach_attention_parameters():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    bb = load_backbone(layer, weights=None)
    unchanged = {name for name, _ in layer.named_parameters()} - set(changed(layer, bb.module))
    # what stays is what is initialized to constants: norms' ones and zeros, attention biases
    assert unchanged == {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                         "self_attn.in_proj_bias", "self_attn.out_proj.bias"}
