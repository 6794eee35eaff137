import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer.inputs import Collate, as_samples


def test_image_layouts_are_recognised(digits):
    images, _ = digits
    nhw = images[:4]
    nhwc = np.repeat(nhw[..., None], 3, axis=-1)
    nchw = nhwc.transpose(0, 3, 1, 2)
    for X, kind in [(nhw, "nchw"), (nhwc, "nhwc"), (nchw, "nchw")]:
        samples = as_samples(X, "image")
        assert samples.kind == kind
        batch = samples.__getitems__([0, 3])
        assert batch.dtype == torch.uint8
        assert batch.shape[0] == 2 and batch.shape[-2:] == (8, 8)
    # every layout yields the same pixels for the same image
    a = as_samples(nhwc, "image").__getitems__([1])
    b = as_samples(nchw, "image").__getitems__([1])
    assert torch.equal(a, b)


def test_paths_and_pil_decode_lazily(image_files):
    paths, _ = image_files
    samples = as_samples(paths, "image")
    assert samples.kind == "paths"
    batch = samples.__getitems__([0, 1])
    assert [tuple(t.shape) for t in batch] == [(1, 16, 16), (3, 16, 18)]
    pils = [Image.open(p) for p in paths[:3]]
    assert as_samples(pils, "image").kind == "pil"


def test_collate_pairs_targets():
    samples = as_samples(np.arange(12, dtype=np.float32).reshape(4, 3), "tensor",
                         y=np.array([0, 1, 0, 1]))
    X, y = Collate(lambda rows: torch.as_tensor(rows))(samples.__getitems__([2, 3]))
    assert X.shape == (2, 3) and y.tolist() == [0, 1]


@pytest.mark.parametrize("X, message", [
    (np.zeros((0, 8, 8), np.uint8), "empty"),
    (np.zeros((2, 8), np.uint8), "2-D array"),
    (np.zeros((2, 8, 8, 5), np.uint8), "1 (grayscale) or 3 (RGB) channels"),
    (np.full((2, 8, 8), np.nan, np.float32), "NaN"),
    (np.full((2, 8, 8), 3.0, np.float32), "scaled to [0, 1]"),
    (np.zeros((2, 8, 8), np.int64), "must be uint8"),
    (["a cat on a mat", "two dogs"], "got text"),
    ([1, 2], "got a list of"),
])
def test_bad_image_input_is_named(X, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        as_samples(X, "image")


def test_missing_files_are_named(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        as_samples([missing], "image")


def test_non_image_file_is_named(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is not a png")
    samples = as_samples([str(bogus)], "image")
    with pytest.raises(ValueError, match="notes.png.*not an image"):
        samples.__getitems__([0])


def test_text_backbone_rejects_images(digits):
    with pytest.raises(ValueError, match="list of strings"):
        as_samples(digits[0][:3], "text")
    with pytest.raises(ValueError, match="list of strings.*int"):
        as_samples(["ok", 3], "text")


def test_pandas_columns_are_accepted(image_files):
    import pandas as pd

    paths, _ = image_files
    assert as_samples(pd.Series(paths), "image").kind == "paths"
    assert as_samples(pd.DataFrame({"path": paths}), "image").kind == "paths"
    assert as_samples(pd.Series(["a b", "c"]), "text").data == ["a b", "c"]
