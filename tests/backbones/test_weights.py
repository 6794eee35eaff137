"""Weight files given as weights=<path>: a file that does not fit the network,
or cannot be read, is refused with the file and the problem named."""

import re

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from sktransfer import load_backbone


def saved(state, path):
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_module_file_with_other_shapes_names_them(tmp_path, suffix):
    path = saved(nn.Linear(4, 2).state_dict(), tmp_path / f"wide{suffix}")
    with pytest.raises(ValueError, match=(
            rf"wide{re.escape(suffix)}.*does not fit Linear.*shape mismatch.*"
            r"weight: \(2, 4\) in the file, \(2, 3\) in the model")):
        load_backbone(nn.Linear(3, 2), weights=path)


def test_module_file_with_other_keys_names_them(tmp_path):
    path = saved(nn.Sequential(nn.Linear(3, 2)).state_dict(), tmp_path / "seq.pt")
    with pytest.raises(ValueError, match=(
            r"seq.pt.*does not fit Linear.*2 missing keys \['weight', 'bias'\].*"
            r"2 unexpected keys \['0.weight', '0.bias'\]")):
        load_backbone(nn.Linear(3, 2), weights=path)


def test_lazy_module_loads_a_file(tmp_path):
    source = nn.Sequential(nn.Linear(5, 3))
    path = saved(source.state_dict(), tmp_path / "lazy.pt")
    bb = load_backbone(nn.Sequential(nn.LazyLinear(3)), weights=path)
    assert torch.equal(bb.module[0].weight, source[0].weight)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1"])
def test_corrupt_safetensors_names_the_file(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken.safetensors.*safetensors"):
        load_backbone(nn.Linear(3, 2), weights=str(path))


def test_torchvision_file_of_another_architecture_names_the_differences(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grayscale stem
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(2)
    path = saved(state, tmp_path / "gray_resnet.pt")
    with pytest.raises(ValueError) as info:
        load_backbone("torchvision:resnet18", weights=path, image_size=32)
    message = str(info.value)
    assert "gray_resnet.pt" in message
    assert "missing key ['layer4.1.bn2.bias']" in message
    assert "unexpected key ['extra.weight']" in message
    assert "conv1.weight: (64, 1, 7, 7) in the file, (64, 3, 7, 7) in the model" in message


def test_torchvision_corrupt_safetensors_names_the_file(tmp_path):
    path = tmp_path / "resnet.safetensors"
    saved(torchvision.models.resnet18(weights=None).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])  # a truncated download
    with pytest.raises(ValueError, match=r"resnet.safetensors.*safetensors"):
        load_backbone("torchvision:resnet18", weights=str(path), image_size=32)
