import numpy as np
import torch

from sktransfer.backbones import load_backbone
from sktransfer.inference import batch_order, inference_replica, predict_batches
from sktransfer.inputs import Collate, as_samples


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
    out = predict_batches(torch.nn.Identity(), as_samples(X, "tensor"),
                          lambda rows: torch.from_numpy(rows), batch_size=2,
                          output=lambda result, _: result * 2)
    np.testing.assert_array_equal(out, X * 2)


def test_a_replica_on_another_device_copies_and_leaves_the_model_alone():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).train()
    net[0].weight.requires_grad_(False)
    params = {name: (p, p.detach().clone()) for name, p in net.named_parameters()}
    replica = inference_replica(net, torch.device("meta"))
    assert all(t.device.type == "meta" for t in replica.state_dict().values())
    assert not replica.training and net.training and net[1].training
    assert [p.requires_grad for p in replica.parameters()] == [False, True, True, True]
    for name, p in net.named_parameters():
        original, values = params[name]
        assert p is original and p.device.type == "cpu" and torch.equal(p, values)


def test_layers_are_hooked_on_the_replica_only():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    X = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    out = predict_batches(net, as_samples(X, "tensor"), lambda rows: torch.from_numpy(rows),
                          batch_size=1, layers=["0", "2"],
                          output=lambda layers, _: torch.cat([layers["0"], layers["2"]], 1))
    with torch.no_grad():
        hidden = net[0](torch.from_numpy(X))
        expected = torch.cat([hidden, net[2](net[1](hidden))], 1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert all(not m._forward_hooks for m in net.modules())
