import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from torch import nn

from sktransfer import PretrainedFeatureTransformer
from sktransfer.backbones.preprocess import ImagePreprocess
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


# --- image modes: every file decodes to the pixels of its 8-bit equivalent ---------------

def network_input(items):
    """What the network sees for ``items``: decoded and scaled to [0, 1], no resize."""
    prep = ImagePreprocess(8, 8, mean=(0.0,) * 3, std=(1.0,) * 3)
    samples = as_samples(items, "image")
    return Collate(prep)(samples.__getitems__(list(range(len(samples)))))


@pytest.fixture
def gray8(digits):
    """Four 8x8 digits as uint8 grayscale."""
    return digits[0][:4]


def write(folder, name, images):
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{name}_{i}.{'tif' if img.mode in ('F', 'I', 'I;16B', 'CMYK') else 'png'}"
        img.save(path)
        paths.append(str(path))
    return paths


def test_16_bit_png_scales_like_its_8_bit_export(tmp_path, gray8):
    # A 16-bit sample v * 257 + r (r < 257) is the 8-bit sample v at 16-bit precision.
    noise = np.random.RandomState(0).randint(0, 257, gray8.shape)
    deep = np.minimum(gray8.astype(np.int64) * 257 + noise, 65535).astype(np.uint16)
    paths16 = write(tmp_path, "deep", [Image.fromarray(a) for a in deep])
    assert Image.open(paths16[0]).mode == "I;16"
    paths8 = write(tmp_path, "flat", [Image.fromarray(a) for a in gray8])
    torch.testing.assert_close(network_input(paths16), network_input(paths8),
                               atol=1 / 255, rtol=0)
    assert network_input(paths16).amax() > 0.9  # not saturated, not zero


def test_16_bit_big_endian_tiff_scales_like_its_8_bit_export(tmp_path, gray8):
    deep = (gray8.astype(">u2") * 257)
    images = [Image.frombytes("I;16B", (8, 8), a.tobytes()) for a in deep]
    paths16 = write(tmp_path, "deep", images)
    assert Image.open(paths16[0]).mode == "I;16B"
    paths8 = write(tmp_path, "flat", [Image.fromarray(a) for a in gray8])
    torch.testing.assert_close(network_input(paths16), network_input(paths8),
                               atol=1e-6, rtol=0)


def test_float_tiff_in_unit_range_is_kept(tmp_path, gray8):
    floats = [Image.fromarray((a / 255).astype(np.float32)) for a in gray8]
    paths = write(tmp_path, "float", floats)
    assert Image.open(paths[0]).mode == "F"
    paths8 = write(tmp_path, "flat", [Image.fromarray(a) for a in gray8])
    torch.testing.assert_close(network_input(paths), network_input(paths8), atol=1e-6, rtol=0)
    # the same images in memory, as PIL objects
    torch.testing.assert_close(network_input(floats), network_input(paths8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("values, problem", [
    (np.full((8, 8), 2.5, np.float32), r"\[0.0, 2.5\].*\[0, 1\]"),
    (np.full((8, 8), np.nan, np.float32), "NaN"),
])
def test_float_tiff_out_of_range_is_refused(tmp_path, values, problem):
    values[0, 0] = 0.0
    path = write(tmp_path, "hdr", [Image.fromarray(values)])[0]
    with pytest.raises(ValueError, match=f"hdr_0.tif.*mode 'F'.*{problem}"):
        network_input([path])


def test_32_bit_integer_image_is_refused(tmp_path, gray8):
    path = write(tmp_path, "int32", [Image.fromarray(gray8[0].astype(np.int32))])[0]
    assert Image.open(path).mode == "I"
    with pytest.raises(ValueError, match="int32_0.tif.*mode 'I'.*32-bit"):
        network_input([path])


def test_alpha_palette_cmyk_and_bilevel_decode_to_their_visible_pixels(tmp_path, gray8):
    rgb = np.stack([gray8, 255 - gray8, gray8 // 2], axis=-1)
    plain = [Image.fromarray(a) for a in rgb]
    alpha = np.random.RandomState(0).randint(0, 256, gray8.shape, dtype=np.uint8)
    rgba = [Image.fromarray(np.dstack([a, m])) for a, m in zip(rgb, alpha)]
    cmyk = [img.convert("CMYK") for img in plain]  # C = 255 - R, K = 0: exact
    expected = network_input(write(tmp_path, "rgb", plain))
    for images in (rgba, cmyk):
        paths = write(tmp_path, images[0].mode, images)
        assert Image.open(paths[0]).mode == images[0].mode
        torch.testing.assert_close(network_input(paths), expected, atol=0, rtol=0)

    # palette: each index expands to its palette color
    palette = np.random.RandomState(1).randint(0, 256, (256, 3), dtype=np.uint8)
    indexed = []
    for a in gray8:
        img = Image.fromarray(a, mode="L").convert("P")
        img.putpalette(palette.ravel().tolist())
        indexed.append(img)
    paths = write(tmp_path, "palette", indexed)
    assert Image.open(paths[0]).mode == "P"
    expected = network_input(write(tmp_path, "lookup", [Image.fromarray(palette[a])
                                                         for a in gray8]))
    torch.testing.assert_close(network_input(paths), expected, atol=0, rtol=0)

    # gray with alpha, and 1-bit: the gray levels, alpha dropped
    gray_alpha = [Image.fromarray(np.dstack([a, m])) for a, m in zip(gray8, alpha)]
    bilevel = [Image.fromarray(a > 127) for a in gray8]
    for images, equivalent in [(gray_alpha, gray8), (bilevel, (gray8 > 127) * 255)]:
        paths = write(tmp_path, images[0].mode, images)
        assert Image.open(paths[0]).mode == images[0].mode
        expected = network_input(write(tmp_path, "gray", [Image.fromarray(e.astype(np.uint8))
                                                          for e in equivalent]))
        torch.testing.assert_close(network_input(paths), expected, atol=0, rtol=0)


def test_16_bit_files_give_the_features_of_their_8_bit_exports(tmp_path, gray8):
    # 37 x 37 is the resize size for image_size=32: no resampling, so the
    # 8-bit and 16-bit inputs meet the network with equal values.
    flat = np.stack([np.asarray(Image.fromarray(a).resize((37, 37))) for a in gray8])
    paths16 = write(tmp_path, "deep", [Image.fromarray(a.astype(np.uint16) * 257) for a in flat])
    paths8 = write(tmp_path, "flat", [Image.fromarray(a) for a in flat])
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                       random_state=0).fit(paths8)
    features = pft.transform(paths16 + paths8)
    np.testing.assert_allclose(features[:4], features[4:], atol=1e-5)


# --- one sample where a list was expected ------------------------------------------------

@pytest.mark.parametrize("modality", ["image", "text", "tensor"])
@pytest.mark.parametrize("X, what", [
    ("hello world", "string"), ("img.png", "string"), (b"\x89PNG", "bytes"),
    (Path("img.png"), "path"), (3.5, "float"),
])
def test_a_single_sample_is_refused(modality, X, what):
    with pytest.raises(ValueError, match=f"Expected a list of samples, got a single {what}"
                                         r".*wrap it in a list"):
        as_samples(X, modality)


def test_estimators_refuse_a_single_string(digits):
    X = np.random.RandomState(0).rand(5, 4).astype(np.float32)
    pft = PretrainedFeatureTransformer(nn.Linear(4, 3)).fit(X)
    with pytest.raises(ValueError, match="got a single string 'hello world'"):
        pft.transform("hello world")
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                       random_state=0).fit(digits[0][:2])
    with pytest.raises(ValueError, match="got a single string 'img.png'"):
        pft.transform("img.png")


# --- polars, as pandas -------------------------------------------------------------------

def test_polars_columns_are_accepted(image_files):
    import polars as pl

    paths, _ = image_files
    for X in (pl.Series(paths), pl.DataFrame({"path": paths})):
        samples = as_samples(X, "image")
        assert samples.kind == "paths" and samples.data == paths
    for X in (pl.Series(["a b", "c"]), pl.DataFrame({"text": ["a b", "c"]})):
        assert as_samples(X, "text").data == ["a b", "c"]
    with pytest.raises(ValueError, match=r"item 1 has type NoneType.*missing value"):
        as_samples(pl.Series(["a b", None]), "text")


def test_column_transformer_passes_a_polars_path_column(image_files):
    import polars as pl
    from sklearn.compose import ColumnTransformer

    paths, _ = image_files
    frame = pl.DataFrame({"path": paths[:4], "size": [1.0, 2.0, 3.0, 4.0]})
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                       random_state=0)
    ct = ColumnTransformer([("image", pft, ["path"])])
    features = ct.fit_transform(frame)
    expected = ct.named_transformers_["image"].transform(paths[:4])
    np.testing.assert_allclose(features, expected, atol=1e-6)


def test_polars_frame_for_a_tensor_backbone_is_like_pandas():
    import pandas as pd
    import polars as pl

    X = np.random.RandomState(0).rand(5, 2)
    columns = {"a": X[:, 0], "b": X[:, 1]}
    pft = PretrainedFeatureTransformer(nn.Linear(2, 3), random_state=0)
    from_polars = clone(pft).fit(pl.DataFrame(columns))
    from_pandas = clone(pft).fit(pd.DataFrame(columns))
    assert list(from_polars.feature_names_in_) == ["a", "b"]
    np.testing.assert_array_equal(from_polars.transform(pl.DataFrame(columns)),
                                  from_pandas.transform(pd.DataFrame(columns)))


# --- clear errors ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 0, 8, 3), (4, 8, 8, 0), (4, 3, 0, 8), (4, 8, 0)])
def test_image_arrays_with_an_empty_dimension_are_refused(shape):
    with pytest.raises(ValueError, match=rf"size 0.*{re.escape(str(shape))}"):
        as_samples(np.zeros(shape, np.uint8), "image")


@pytest.mark.parametrize("items, problem", [
    (["ok", "fine", None], r"item 2 has type NoneType: None \(a missing value\?\)"),
    (["ok", float("nan")], r"item 1 has type float: nan \(a missing value\?\)"),
    (["ok", 3], r"item 1 has type int: 3"),
    (["ok", "bad \ud800 text"], r"item 1 is not valid Unicode.*surrogate"),
])
def test_bad_text_items_are_named_by_index(items, problem):
    with pytest.raises(ValueError, match=problem):
        as_samples(items, "text")
