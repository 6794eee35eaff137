"""Hugging Face image encoders and the towers of CLIP and SigLIP, against transformers itself.

Every model is a tiny random one saved with its image processor (and
tokenizer) by ``save_pretrained``; "by hand" is the processor and the model
called as their documentation shows.
"""

import os
import shutil
import string
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from PIL import Image

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer, load_backbone

transformers = pytest.importorskip("transformers")

TEXTS = ["a cat sat on the mat", "dogs run far", "a big red car!"]
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           image_size=32, patch_size=8)


def _save(folder, model, processor, tokenizer=None):
    torch.manual_seed(0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


def _clip_tokenizer():
    """A character-level CLIP BPE tokenizer (no merges): the real class on a tiny vocabulary."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!?'":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def _build(kind, folder):
    T = transformers
    torch.manual_seed(0)
    if kind == "vit":
        return _save(folder, T.ViTModel(T.ViTConfig(**VIT)),
                     T.ViTImageProcessor(size={"height": 32, "width": 32}))
    bit = T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                              image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    dino = dict(VIT, mlp_ratio=2)
    dino.pop("intermediate_size")
    if kind == "dinov2":
        return _save(folder, T.Dinov2Model(T.Dinov2Config(**dino)), bit)
    if kind == "dinov2_registers":
        config = T.Dinov2WithRegistersConfig(**dino, num_register_tokens=4)
        return _save(folder, T.Dinov2WithRegistersModel(config), bit)
    if kind == "clip":
        tok = _clip_tokenizer()
        config = T.CLIPConfig(
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, vocab_size=len(tok), max_position_embeddings=24,
                             bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=VIT, projection_dim=24)
        processor = T.CLIPImageProcessor(size={"shortest_edge": 32},
                                         crop_size={"height": 32, "width": 32})
        return _save(folder, T.CLIPModel(config), processor, tok)
    if kind == "siglip":
        # SigLIP's own tokenizer needs sentencepiece, which this machine lacks: the
        # CLIP tokenizer stands in (the padding to max_length is SigLIP's, by model type).
        tok = _clip_tokenizer()
        config = T.SiglipConfig(
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, vocab_size=len(tok), max_position_embeddings=16),
            vision_config=VIT)
        return _save(folder, T.SiglipModel(config),
                     T.SiglipImageProcessor(size={"height": 32, "width": 32}), tok)
    stages = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    convnext = T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    if kind == "convnext":
        return _save(folder, T.ConvNextModel(T.ConvNextConfig(**stages)), convnext)
    if kind == "resnet":
        return _save(folder, T.ResNetModel(T.ResNetConfig(**stages, embedding_size=8)), convnext)
    raise AssertionError(kind)


KINDS = ("vit", "dinov2", "dinov2_registers", "clip", "siglip", "convnext", "resnet")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_vision")
    return {kind: _build(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def pictures():
    """Real photographs (scikit-learn's sample images), small: PIL images of mixed sizes
    and one uint8 array (N, H, W, 3) of a single size."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    pil = [photos[i % 2].resize((40 + 7 * i, 35 + 3 * i), Image.BILINEAR) for i in range(4)]
    array = np.stack([np.asarray(photos[i % 2].resize((45, 37))) for i in range(4)])
    return pil, array


def _by_hand(kind, folder, pixel_values):
    """The embedding each family's documentation computes from ``pixel_values``."""
    T = transformers
    with torch.no_grad():
        if kind in ("clip", "siglip"):
            model = T.AutoModel.from_pretrained(folder).eval()
            out = model.get_image_features(pixel_values=pixel_values)
            return (out if torch.is_tensor(out) else out.pooler_output).numpy()
        model = T.AutoModel.from_pretrained(folder).eval()
        out = model(pixel_values=pixel_values)
        if kind == "vit":
            return out.last_hidden_state[:, 0].numpy()
        return out.pooler_output.flatten(1).numpy()


def _close(ours, theirs):
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_is_processor_plus_model_by_hand(kind, hf_dirs, pictures):
    folder = hf_dirs[kind]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    for images in pictures:
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        pft = PretrainedFeatureTransformer(f"hf:{folder}", batch_size=3).fit(images)
        # the preprocessing alone: the processor's pixel values, to float rounding
        ours = pft.backbone_.preprocess(
            torch.from_numpy(images).permute(0, 3, 1, 2) if isinstance(images, np.ndarray)
            else [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
        torch.testing.assert_close(ours, pixels, atol=1e-5, rtol=0)
        expected = _by_hand(kind, folder, pixels)
        _close(pft.transform(images), expected)
        assert pft.n_features_out_ == expected.shape[1]


def test_slow_pil_processor_is_within_an_8_bit_level(hf_dirs, pictures):
    """sktransfer matches the torchvision processor (transformers' default); the PIL one
    (backend="pil") resizes with PIL's filters and rounds differently, by at most about
    one 8-bit level of a pixel (1/255 over the std) here."""
    folder = hf_dirs["clip"]
    fast = transformers.AutoImageProcessor.from_pretrained(folder)
    slow = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert "Pil" in type(slow).__name__
    pil = pictures[0]
    gap = (fast(images=pil, return_tensors="pt")["pixel_values"]
           - slow(images=pil, return_tensors="pt")["pixel_values"]).abs()
    assert gap.max() <= 2.5 / 255 / min(fast.image_std)


def test_grayscale_digits_are_repeated_to_rgb(hf_dirs, digits):
    images = digits[0][:4]
    pft = PretrainedFeatureTransformer(f"hf:{hf_dirs['dinov2']}").fit(images)
    processor = transformers.AutoImageProcessor.from_pretrained(hf_dirs["dinov2"])
    pixels = processor(images=[Image.fromarray(a) for a in images],
                       return_tensors="pt")["pixel_values"]
    _close(pft.transform(images), _by_hand("dinov2", hf_dirs["dinov2"], pixels))


def test_pooling_choices_on_dinov2_with_registers(hf_dirs, pictures):
    folder = hf_dirs["dinov2_registers"]
    images = pictures[1]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = transformers.AutoModel.from_pretrained(folder)(
            pixel_values=pixels).last_hidden_state.numpy()
    cls, patches = tokens[:, 0], tokens[:, 1 + 4:]  # class token, then 4 registers
    got = {p: PretrainedFeatureTransformer(f"hf:{folder}", pooling=p).fit_transform(images)
           for p in ("auto", "cls", "avg", "max", "cls+avg")}
    _close(got["auto"], cls)  # DINOv2's pooler_output is its normed class token
    _close(got["cls"], cls)
    _close(got["avg"], patches.mean(1))
    _close(got["max"], patches.max(1))
    _close(got["cls+avg"], np.hstack([cls, patches.mean(1)]))


def test_clip_cls_is_the_normed_class_token_before_projection(hf_dirs, pictures):
    folder = hf_dirs["clip"]
    images = pictures[1]
    pixels = transformers.AutoImageProcessor.from_pretrained(folder)(
        images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        vision = transformers.CLIPVisionModel.from_pretrained(folder)(pixel_values=pixels)
    cls = PretrainedFeatureTransformer(f"hf:{folder}", pooling="cls").fit_transform(images)
    _close(cls, vision.pooler_output.numpy())
    avg = PretrainedFeatureTransformer(f"hf:{folder}", pooling="avg").fit_transform(images)
    _close(avg, vision.last_hidden_state[:, 1:].mean(1).numpy())


@pytest.mark.parametrize("kind, pooling, message", [
    ("siglip", "cls", "takes the class token, and hf:.*siglip has none"),
    ("convnext", "cls", "does not apply to .*a CNN"),
    ("vit", "lasttoken", "does not apply to .*image transformer"),
])
def test_pooling_that_does_not_apply_is_refused(kind, pooling, message, hf_dirs, pictures):
    pft = PretrainedFeatureTransformer(f"hf:{hf_dirs[kind]}", pooling=pooling)
    with pytest.raises(ValueError, match=message):
        pft.fit(pictures[1])


def test_cnn_max_pools_the_last_feature_map(hf_dirs, pictures):
    folder = hf_dirs["convnext"]
    images = pictures[1]
    pixels = transformers.AutoImageProcessor.from_pretrained(folder)(
        images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        fmap = transformers.AutoModel.from_pretrained(folder)(pixel_values=pixels).last_hidden_state
    got = PretrainedFeatureTransformer(f"hf:{folder}", pooling="max").fit_transform(images)
    _close(got, fmap.flatten(2).amax(2).numpy())


def test_layer_groups_and_layer_taps(hf_dirs, pictures):
    folder = hf_dirs["dinov2_registers"]
    backbone = load_backbone(f"hf:{folder}")
    assert backbone.layer_names == ["model.embeddings", "model.encoder.layer.0",
                                    "model.encoder.layer.1", "model.layernorm"]
    images = pictures[1]
    pixels = transformers.AutoImageProcessor.from_pretrained(folder)(
        images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        states = transformers.AutoModel.from_pretrained(folder)(
            pixel_values=pixels, output_hidden_states=True).hidden_states
    layers = ["model.encoder.layer.0", "model.encoder.layer.1"]
    got = PretrainedFeatureTransformer(f"hf:{folder}", layers=layers).fit_transform(images)
    # each layer's patch tokens (after the class token and 4 registers) averaged
    _close(got, np.hstack([states[i][:, 5:].mean(1).numpy() for i in (1, 2)]))
    cls = PretrainedFeatureTransformer(f"hf:{folder}", layers=layers[-1:], pooling="cls+avg")
    assert cls.fit_transform(images).shape == (4, 64)
    clip = load_backbone(f"hf:{hf_dirs['clip']}")
    assert clip.layer_names[0] == "model.vision_model.embeddings"
    assert clip.layer_names[-2:] == ["model.vision_model.post_layernorm",
                                     "model.visual_projection"]


def test_clip_text_tower_is_get_text_features(hf_dirs, pictures):
    folder = hf_dirs["clip"]
    text = PretrainedFeatureTransformer(f"hf-text:{folder}").fit(TEXTS)
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    tokens = transformers.AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True,
                                                                return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**tokens)
    _close(text.transform(TEXTS), (out if torch.is_tensor(out) else out.pooler_output).numpy())
    image = PretrainedFeatureTransformer(f"hf-image:{folder}").fit(pictures[1])
    assert image.n_features_out_ == text.n_features_out_ == 24
    assert image.transform(pictures[1]).shape[1] == text.transform(TEXTS).shape[1]


def test_siglip_text_tower_pads_to_max_length(hf_dirs):
    folder = hf_dirs["siglip"]
    text = PretrainedFeatureTransformer(f"hf-text:{folder}").fit(TEXTS)
    model = transformers.SiglipModel.from_pretrained(folder).eval()
    tokens = transformers.AutoTokenizer.from_pretrained(folder)(
        TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**tokens)
    _close(text.transform(TEXTS), (out if torch.is_tensor(out) else out.pooler_output).numpy())
    # one text alone pads the same: its embedding does not depend on the batch
    np.testing.assert_allclose(text.transform(TEXTS[1:2]), text.transform(TEXTS)[1:2],
                               atol=1e-5)


def test_towers_and_modalities_are_checked(hf_dirs, tiny_bert_path):
    with pytest.raises(ValueError, match="asks for a image encoder.*text model"):
        load_backbone(f"hf-image:{tiny_bert_path}")
    with pytest.raises(ValueError, match="asks for a text encoder.*image model"):
        load_backbone(f"hf-text:{hf_dirs['vit']}")
    with pytest.raises(ValueError, match="text tower .*use pooling='auto'"):
        load_backbone(f"hf-text:{hf_dirs['clip']}", pooling="cls")


def test_folder_without_image_processor_is_named(hf_dirs, tmp_path):
    folder = tmp_path / "vit"
    shutil.copytree(hf_dirs["vit"], folder)
    os.remove(folder / "preprocessor_config.json")
    with pytest.raises(OSError, match="holds no image processor.*preprocessor_config.json"):
        load_backbone(f"hf:{folder}")


def test_image_size_interpolates_position_embeddings(hf_dirs, pictures):
    pft = PretrainedFeatureTransformer(f"hf:{hf_dirs['vit']}", image_size=48).fit(pictures[1])
    assert pft.backbone_.preprocess.input_size == (48, 48)
    assert pft.backbone_.module.interpolate
    assert pft.transform(pictures[1]).shape == (4, 32)


def test_random_weights_and_local_file(hf_dirs, tmp_path, pictures):
    from safetensors.torch import save_file

    spec = f"hf:{hf_dirs['vit']}"
    pretrained = load_backbone(spec)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.module.state_dict().items()}, str(path))
    name = "model.embeddings.cls_token"
    ref = pretrained.module.state_dict()[name]
    assert torch.equal(load_backbone(spec, weights=str(path)).module.state_dict()[name], ref)
    assert not torch.equal(load_backbone(spec, weights=None).module.state_dict()[name], ref)
    # ViT's dense + tanh pooler is no part of the embedding: dropped, so nothing trains it
    assert not any(k.startswith("model.pooler") for k in pretrained.module.state_dict())


def test_saved_and_pickled_models_load_offline_in_a_fresh_process(hf_dirs, tmp_path, pictures):
    folder = tmp_path / "clip"
    shutil.copytree(hf_dirs["clip"], folder)
    images = pictures[1]
    image = PretrainedFeatureTransformer(f"hf:{folder}", pooling="cls+avg").fit(images)
    text = PretrainedFeatureTransformer(f"hf-text:{folder}").fit(TEXTS)
    sktransfer.save(image, tmp_path / "image.skt")
    joblib.dump(text, tmp_path / "text.joblib")
    np.save(tmp_path / "X.npy", images)
    np.save(tmp_path / "image.npy", image.transform(images))
    np.save(tmp_path / "text.npy", text.transform(TEXTS))
    shutil.rmtree(folder)  # rebuilt from the saved config and weights alone
    code = (
        "import joblib, numpy as np, sys, sktransfer; d = sys.argv[1];"
        "i = sktransfer.load(d + '/image.skt'); t = joblib.load(d + '/text.joblib');"
        "assert np.array_equal(i.transform(np.load(d + '/X.npy')), np.load(d + '/image.npy'));"
        f"assert np.array_equal(t.transform({TEXTS!r}), np.load(d + '/text.npy'));"
        "print('same')"
    )
    env = {"PATH": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "no-cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "same" in result.stdout


def test_joblib_round_trip_and_feature_cache(hf_dirs, pictures, tmp_path):
    images = pictures[1]
    pft = PretrainedFeatureTransformer(f"hf:{hf_dirs['dinov2']}", cache=str(tmp_path / "c"))
    first = pft.fit_transform(images)
    np.testing.assert_array_equal(pft.transform(images), first)  # from the cache
    joblib.dump(pft, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").transform(images), first)
    other = PretrainedFeatureTransformer(f"hf:{hf_dirs['dinov2']}", pooling="cls+avg",
                                         cache=str(tmp_path / "c")).fit(images)
    assert other.transform(images).shape[1] == 2 * first.shape[1]  # another key, not a hit


def test_fine_tuned_classifier_learns_on_an_hf_image_backbone(hf_dirs):
    rng = np.random.RandomState(0)
    # separable: dark images with a bright left half vs. bright right half
    X = rng.randint(0, 60, size=(48, 32, 32, 3)).astype(np.uint8)
    y = np.arange(48) % 2
    X[y == 0, :, :16] += 150
    X[y == 1, :, 16:] += 150
    clf = FineTunedClassifier(f"hf:{hf_dirs['vit']}", max_epochs=8, lr=3e-3, batch_size=16,
                              validation_fraction=0, random_state=0).fit(X, y)
    losses = clf.history_[:, "train_loss"]
    assert losses[-1] < losses[0]
    assert (clf.predict(X) == y).mean() > 0.9
    # freeze=2: the embeddings and the first block (groups input first) do not move
    start = load_backbone(f"hf:{hf_dirs['vit']}").module.state_dict()
    frozen = FineTunedClassifier(f"hf:{hf_dirs['vit']}", freeze=2, max_epochs=1, lr=0.01,
                                 validation_fraction=0, random_state=0).fit(X, y)
    after = frozen.backbone_.module.state_dict()
    moved = {k.split(".")[1] + (k.split(".")[2] if "layers" in k else "")
             for k in start if not torch.equal(start[k], after[k])}
    assert moved == {"layers1", "layernorm"}


def test_ranking_takes_hf_image_specs(hf_dirs, digits):
    from sktransfer import rank_backbones

    X, y = digits[0][:60], digits[1][:60] % 2
    table = rank_backbones([f"hf:{hf_dirs['dinov2']}", f"hf:{hf_dirs['convnext']}"], X, y,
                           metrics=("logme",), cv=3)
    assert len(table) == 2


@pytest.mark.gpu
def test_preprocessing_on_the_gpu_gives_the_cpu_embedding(hf_dirs, pictures):
    """Same-size arrays are preprocessed on the device (fp32 here): CUDA's resize kernels
    may round a pixel one 8-bit level apart from the CPU's, hence 1% of the scale."""
    images = pictures[1]
    spec = f"hf:{hf_dirs['clip']}"
    cpu = PretrainedFeatureTransformer(spec, device="cpu").fit_transform(images)
    gpu = PretrainedFeatureTransformer(spec, device="cuda", precision="fp32").fit(images)
    np.testing.assert_allclose(gpu.transform(images), cpu, atol=1e-2 * np.abs(cpu).max())
    assert gpu.backbone_.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).cuda()).is_cuda
