import numpy as np
import torch

from sktransfer.backbones import load_backbone
from sktransfer.engine.module import InferenceModule, private_copy
from sktransfer.engine.runtimes import Engine
from sktransfer.inference import batch_order, predict_batches
from sktransfer.inputs import Collate, as_samples

CPU = torch.device("cpu")


def eager(net, layers=None, output=None):
    return Engine(InferenceModule(private_copy(net, CPU), layers, output), CPU)


def test_text_batches_go_longest_first_by_token_count(minilm_path):
    tokenize = load_backbone(f"hf:{minilm_path}").preprocess
    # few characters but many word pieces, against many characters in few words
    texts = ["a b c d e f g h", "x", "internationalization", "q w e r t y u i o p a s d"]
    counts = tokenize.lengths(texts)
    order = np.concatenate(batch_order(as_samples(texts, "text"), tokenize, 2))
    assert [counts[i] for i in order] == sorted(counts, reverse=True)


def test_raw_batches_pass_through_collate_when_preprocessing_moves_to_the_device(digits):
    samples = as_samples(digits[0][:3], "image", y=np.array([1, 2, 3]))
    raw, y = Collate(None)(samples.__getitems__([0, 2]))
    # the very pixels, untouched (uint8, channel axis added), and their labels
    assert raw.dtype == torch.uint8 and y.tolist() == [1, 3]
    torch.testing.assert_close(raw, torch.from_numpy(digits[0][[0, 2]])[:, None],
                               rtol=0, atol=0)


def test_predictions_come_back_in_input_order():
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = predict_batches(eager(torch.nn.Identity(), output=lambda result, _: result * 2),
                          as_samples(X, "tensor"), lambda rows: torch.from_numpy(rows),
                          batch_size=2)
    np.testing.assert_array_equal(out, X * 2)


def test_a_private_copy_on_another_device_copies_and_leaves_the_model_alone():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).train()
    net[0].weight.requires_grad_(False)
    params = {name: (p, p.detach().clone()) for name, p in net.named_parameters()}
    replica = private_copy(net, torch.device("meta"))
    assert all(t.device.type == "meta" for t in replica.state_dict().values())
    assert not replica.training and net.training and net[1].training
    assert [p.requires_grad for p in replica.parameters()] == [False, True, True, True]
    for name, p in net.named_parameters():
        original, values = params[name]
        assert p is original and p.device.type == "cpu" and torch.equal(p, values)


def test_a_private_copy_shares_the_weights_on_their_device_and_keeps_ties():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    net[1].weight = net[0].weight
    replica = private_copy(net, CPU)
    assert replica[0].weight is net[0].weight and replica[1].weight is replica[0].weight
    assert replica is not net and replica[0] is not net[0]


def test_a_channels_last_copy_copies_only_the_kernels():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    replica = private_copy(net, CPU, channels_last=True)
    assert replica[0].weight is not net[0].weight
    assert replica[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[0].weight.is_contiguous() and replica[0].bias is net[0].bias
    torch.testing.assert_close(replica[0].weight, net[0].weight)


def test_layers_are_hooked_on_the_private_copy_only():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    X = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    engine = eager(net, layers=["0", "2"],
                   output=lambda layers, _: torch.cat([layers["0"], layers["2"]], 1))
    out = predict_batches(engine, as_samples(X, "tensor"), lambda rows: torch.from_numpy(rows),
                          batch_size=1)
    with torch.no_grad():
        hidden = net[0](torch.from_numpy(X))
        expected = torch.cat([hidden, net[2](net[1](hidden))], 1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert all(not m._forward_hooks for m in net.modules())
