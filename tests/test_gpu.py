"""Checks that need a CUDA device; skipped on machines without one."""

import pickle

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureTransformer

pytestmark = pytest.mark.gpu


def test_cuda_embeddings_match_cpu_in_bf16_tolerance(digits):
    params = dict(backbone="torchvision:resnet18", weights=None, image_size=64, random_state=0)
    X = digits[0][:64]
    cpu = PretrainedFeatureTransformer(device="cpu", **params).fit(X).transform(X)
    gpu = PretrainedFeatureTransformer(device="cuda", precision="auto", **params).fit(X)
    out = gpu.transform(X)
    rel = np.linalg.norm(out - cpu) / np.linalg.norm(cpu)
    assert out.dtype == np.float32 and rel < 2e-2
    # the weights go back to the CPU after transform, so the GPU is free for others
    assert next(gpu.backbone_.module.parameters()).device.type == "cpu"


def test_model_used_on_cuda_pickles_and_loads_on_cpu(monkeypatch, digits):
    X = digits[0][:8]
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                       device="cuda", precision="fp32", random_state=0).fit(X)
    pft.backbone_.module.to("cuda")  # as if pickled mid-use, weights on the GPU
    blob = pickle.dumps(pft)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = pickle.loads(blob)
    loaded.set_params(device="cpu")
    assert next(loaded.backbone_.module.parameters()).device.type == "cpu"
    assert loaded.transform(X).shape == (8, 512)
