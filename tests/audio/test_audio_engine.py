"""Audio through the engine: every runtime gives the torch embeddings (int8 to
quantization tolerance), on batches of other lengths than the first, and N
threads sharing one fitted audio transformer get the single-thread rows."""

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureTransformer

from test_threads import assert_threads_match_single_thread

from .tiny import RATE, chirp, noise, tone

pytest.importorskip("soundfile")
pytest.importorskip("soxr")


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def clips():
    # Different lengths, so the first batch pads (and, for wav2vec2, masks).
    return [tone(440, 0.5), noise(0.31, seed=1), chirp(200, 3000, 0.42), tone(1000, 0.2)]


# wav2vec2 with an attention mask (the waveform, its sample mask and the frame
# mask: three lengths in one batch), and Whisper's encoder (a fixed window).
@pytest.mark.parametrize("kind, runtime, quantize, layers, floor", [
    ("wav2vec2-layer", "onnx", None, None, 0.9999),
    ("wav2vec2-layer", "onnx", "int8", None, 0.99),
    ("whisper", "onnx", None, ["model.layers.0", "model.layers.1"], 0.9999),
    # torch.compile: 36 s and 15 s with a cold inductor cache on 2 loaded cores
    # (5 s and 1 s warm), hence slow.
    pytest.param("wav2vec2-layer", "compile", None, None, 0.9999, marks=pytest.mark.slow),
    pytest.param("whisper", "compile", None, None, 0.9999, marks=pytest.mark.slow),
])
def test_runtimes_match_torch_on_audio(models, kind, runtime, quantize, layers, floor):
    params = dict(backbone=f"hf:{models(kind)}", sampling_rate=RATE, batch_size=4,
                  device="cpu", layers=layers)
    torch_pft = PretrainedFeatureTransformer(**params).fit(clips()[:2])
    other = PretrainedFeatureTransformer(runtime=runtime, quantize=quantize,
                                         **params).fit(clips()[:2])
    assert cosine(other.transform(clips()), torch_pft.transform(clips())).min() >= floor
    if runtime == "onnx":
        # The graph exported from the first batch takes any batch size and
        # length: one short clip alone, then two of a length not seen before.
        for later in ([tone(700, 0.15)], [noise(0.27, seed=5), chirp(300, 900, 0.27)]):
            assert cosine(other.transform(later), torch_pft.transform(later)).min() >= floor


@pytest.fixture
def one_torch_thread():
    """One torch thread per call: eight threads with a team each would
    oversubscribe two cores many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("layers", [None, ["model.encoder.layers.0", "model.encoder.layers.1"]])
def test_threads_share_an_audio_transformer(models, one_torch_thread, layers):
    # Clips of many lengths: every call pads and masks its batches its own way.
    rng = np.random.RandomState(0)
    sounds = [noise(rng.uniform(0.05, 0.2), seed=i) for i in range(24)]
    pft = PretrainedFeatureTransformer(f"hf:{models('wav2vec2-layer')}", sampling_rate=RATE,
                                       batch_size=3, device="cpu", layers=layers).fit(sounds[:2])
    assert_threads_match_single_thread(pft.transform, sounds)
