"""One fitted estimator shared by many threads (a web server, Dask's threaded
workers) gives every thread its single-thread results, and no call changes
the fitted model: no hooks left on it, no device moves, no train/eval flips,
no change to torch's global RNG."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

N_THREADS = 8
CALLS_PER_THREAD = 3


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 16),
                         nn.ReLU())


def resnet(**kwargs):
    return PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                        random_state=0, batch_size=4, device="cpu", **kwargs)


def input_slices(n_samples):
    """A different slice of the data for every (thread, call): lengths and rows differ."""
    rng = np.random.RandomState(0)
    slices = []
    for _ in range(N_THREADS * CALLS_PER_THREAD):
        size = rng.randint(3, 9)
        start = rng.randint(0, n_samples - size)
        slices.append(slice(start, start + size))
    return slices


def assert_threads_match_single_thread(method, X):
    """Run ``method`` on many slices of ``X`` from 8 threads at once and alone."""
    slices = input_slices(len(X))
    expected = [method(X[s]) for s in slices]
    # A barrier makes the threads start together, so their calls overlap.
    barrier = threading.Barrier(N_THREADS)

    def worker(t):
        barrier.wait()
        return [method(X[s]) for s in slices[t::N_THREADS]]

    with ThreadPoolExecutor(N_THREADS) as pool:
        per_thread = list(pool.map(worker, range(N_THREADS)))
    for t, results in enumerate(per_thread):
        for s, got in zip(slices[t::N_THREADS], results):
            i = slices.index(s)
            np.testing.assert_array_equal(got, expected[i], err_msg=f"thread {t}, rows {s}")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Torch's own thread pool at one thread: eight threads each running an
    OpenMP team would oversubscribe a small machine many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def flat_digits(digits):
    images, labels = digits
    return (images[:200].reshape(200, -1) / 255.0).astype(np.float32), labels[:200]


@pytest.mark.parametrize("layers", [None, ["layer1", "layer3", "layer4"]])
def test_threads_share_a_feature_transformer(digits, layers):
    images = digits[0][:60]
    pft = resnet(layers=layers).fit(images[:4])
    assert_threads_match_single_thread(pft.transform, images)


def test_threads_share_a_text_encoder(minilm_path):
    # Sentences of very different lengths: each call pads to its own longest,
    # so a tokenizer shared without care would pad with another call's settings.
    words = "the quick brown fox jumps over a lazy dog near our quiet river bank".split()
    rng = np.random.RandomState(0)
    texts = np.array([" ".join(rng.choice(words, rng.randint(1, 40))) for _ in range(40)])
    pft = PretrainedFeatureTransformer("hf:" + minilm_path, batch_size=4, device="cpu").fit(
        texts[:2])
    assert_threads_match_single_thread(pft.transform, texts)


@pytest.fixture(scope="module")
def fitted_classifier(flat_digits):
    X, y = flat_digits
    return FineTunedClassifier(mlp, lr=0.05, max_epochs=2, batch_size=4, random_state=0,
                               device="cpu").fit(X, y)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "transform"])
def test_threads_share_a_fine_tuned_classifier(fitted_classifier, flat_digits, method):
    assert_threads_match_single_thread(getattr(fitted_classifier, method), flat_digits[0])


def model_state(module):
    """What a call must leave as it was: parameter objects, devices, flags, hooks."""
    return {
        "params": [(name, id(p), p.device) for name, p in module.named_parameters()],
        "buffers": [(name, id(b), b.device) for name, b in module.named_buffers()],
        "training": [(name, m.training) for name, m in module.named_modules()],
        "hooks": [(name, len(m._forward_hooks), len(m._forward_pre_hooks))
                  for name, m in module.named_modules()],
    }


@pytest.mark.parametrize("layers", [None, ["layer2", "layer4"]])
def test_transform_leaves_the_fitted_model_as_it_was(digits, layers):
    images = digits[0][:6]
    pft = resnet(layers=layers).fit(images)
    module = pft.backbone_.module
    # A submodule left in training mode by the user must stay so: a call
    # never flips the flags of the shared model, it runs an eval() replica.
    module.layer3.train()
    before = model_state(module)
    rng_before = torch.get_rng_state()
    out = pft.transform(images)
    assert model_state(module) == before
    assert all(not m._forward_hooks for m in module.modules())
    # No global RNG draw (a DataLoader draws its base seed from it by default).
    assert torch.equal(torch.get_rng_state(), rng_before)
    # ... and the layer in training mode did not change the result: the
    # replica runs in eval mode (BatchNorm on running statistics).
    module.layer3.eval()
    np.testing.assert_array_equal(pft.transform(images), out)


def test_predict_leaves_the_fine_tuned_model_as_it_was(fitted_classifier, flat_digits):
    module = fitted_classifier._model()
    rng_before = torch.get_rng_state()
    before = model_state(module)
    fitted_classifier.predict_proba(flat_digits[0][:10])
    fitted_classifier.transform(flat_digits[0][:10])
    assert model_state(module) == before
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.gpu
def test_threads_share_a_feature_transformer_on_cuda(digits):
    images = digits[0][:60]
    pft = resnet(layers=["layer2", "layer4"]).set_params(device="cuda").fit(images[:4])
    module = pft.backbone_.module
    before = model_state(module)
    assert_threads_match_single_thread(pft.transform, images)
    # The weights stay on the CPU, the same objects, between and during calls.
    assert model_state(module) == before
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_copies_of_a_text_encoder_share_its_tokenizer_safely(minilm_path):
    """Each fit copies the backbone; the copies share one tokenizer (no copy of its
    vocabulary per fit) and its lock, so estimators with different prompts used
    at once from threads still tokenize with their own."""
    words = "the quick brown fox jumps over a lazy dog near our quiet river bank".split()
    rng = np.random.RandomState(1)
    texts = np.array([" ".join(rng.choice(words, rng.randint(1, 40))) for _ in range(24)])
    short = PretrainedFeatureTransformer("hf:" + minilm_path, prompt="a long prompt: " * 6,
                                         batch_size=4, device="cpu").fit(texts[:2])
    full = PretrainedFeatureTransformer("hf:" + minilm_path, batch_size=3,
                                        device="cpu").fit(texts[:2])
    assert short.backbone_.preprocess.tokenizer is full.backbone_.preprocess.tokenizer
    expected = {"short": short.transform(texts), "full": full.transform(texts)}
    assert not np.allclose(expected["short"], expected["full"], atol=1e-3)
    with ThreadPoolExecutor(4) as pool:
        futures = [(name, pool.submit(est.transform, texts))
                   for _ in range(4) for name, est in (("short", short), ("full", full))]
        for name, future in futures:
            np.testing.assert_allclose(future.result(), expected[name], atol=1e-5)


def test_estimators_exporting_in_threads_at_once_all_succeed():
    # torch.export is not thread-safe: engines of different estimators exporting
    # together (a threaded search, a server warming up) used to fail but one.
    pytest.importorskip("onnxruntime")
    X = np.random.RandomState(0).rand(6, 3, 12, 12).astype(np.float32)

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())

    nets = [net(seed) for seed in range(4)]  # torch's global seed is not per thread
    expected = [PretrainedFeatureTransformer(n).fit(X).transform(X) for n in nets]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda n: PretrainedFeatureTransformer(n, runtime="onnx")
                            .fit(X).transform(X), nets))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
