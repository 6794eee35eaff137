import numpy as np
import torch

from sktransfer.backbones import load_backbone
from sktransfer.inference import batch_order, predict_batches
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
    assert raw.dtype == torch.uint8 and raw.shape == (2, 1, 8, 8) and y.tolist() == [1, 3]


def test_predictions_come_back_in_input_order():
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = predict_batches(torch.nn.Identity(), as_samples(X, "tensor"),
                          lambda rows: torch.from_numpy(rows), batch_size=2,
                          output=lambda result, _: result * 2)
    np.testing.assert_array_equal(out, X * 2)
