"""adapter= on the fine-tuners: peft's adapters train, the pretrained weights do not (issue 30)."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer

peft = pytest.importorskip("peft")  # in the dev extra; skipped only where not installed

FAST = dict(lr=0.01, max_epochs=3, batch_size=16, random_state=0)
TEXTS = ["the cat sat on the mat", "a dog ran far", "the big red dog", "a small blue cat",
         "the cat ran", "a dog sat on a mat", "big cat", "small dog"] * 3


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())


def tiny_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                             patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(96, 8).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 1).astype(int)


def _backbone_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_the_adapter_and_the_head_change(data):
    X, y = data
    clf = FineTunedClassifier(mlp(), adapter="lora", **FAST)
    clf.fit(X, y)
    module = clf.backbone_.module
    pretrained = mlp().state_dict()
    changed, kept = [], []
    for name, value in module.state_dict().items():
        plain = name.replace(".base_layer.", ".")
        if plain in pretrained:
            (kept if torch.equal(value, pretrained[plain]) else changed).append(name)
        else:
            changed.append(name)
    # every pretrained tensor is as it was; the adapter's moved (lora_B starts at 0)
    assert sorted(kept) == sorted(n for n in module.state_dict() if "base_layer" in n)
    assert changed and all("lora_" in n for n in changed)
    trainable = [n for n, p in module.named_parameters() if n not in clf.backbone_.fixed]
    assert sorted(trainable) == sorted(changed)
    # rank 8 on 8 -> 16 and 16 -> 16: A (8 x in) and B (out x 8) of each layer
    assert sum(p.numel() for n, p in module.named_parameters() if n in trainable) == \
        (8 * 8 + 16 * 8) + (8 * 16 + 16 * 8)


def test_predictions_run_merged_and_equal_the_unmerged_network(data):
    X, y = data
    clf = FineTunedClassifier(mlp(), adapter="lora", **FAST).fit(X, y)
    with torch.no_grad():
        unmerged = clf.head_(clf.backbone_.module(torch.from_numpy(X))).softmax(1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), unmerged, rtol=0, atol=1e-5)
    engine = clf._engine_for("proba", (clf.backbone_.module, clf.head_),
                             lambda b, h: nn.Sequential(b, h))
    # the engine's copy holds plain layers: no adapter layer left to compute
    assert not any("lora" in name for name, _ in engine.module.named_parameters())
    # and the fitted model keeps its adapter, unmerged, for more training
    assert any("lora_A" in name for name, _ in clf.backbone_.module.named_parameters())
    clf.partial_fit(X, y)
    assert len(clf.history_) == FAST["max_epochs"] + 1


@pytest.mark.parametrize("config", [
    lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules="auto", use_dora=True),
    lambda: peft.IA3Config(target_modules=["0", "2"], feedforward_modules=["2"]),
], ids=["dora", "ia3"])
def test_peft_configs_of_two_methods_are_hyperparameters_fit_never_changes(data, config):
    from sklearn.base import clone

    X, y = data
    given = config()
    before = repr(given)
    clf = FineTunedClassifier(mlp(), adapter=given, **FAST).fit(X, y)
    assert repr(given) == before  # peft wrote into a copy
    assert clone(clf).get_params()["adapter"] is not given
    assert type(clf.backbone_.adapter_config) is type(given)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_a_saved_adapter_whose_tensors_do_not_fit_is_refused(data):
    from sktransfer.backbones import backbone_from_state, backbone_state

    X, y = data
    clf = FineTunedClassifier(mlp(), adapter="lora", **FAST).fit(X, y)
    config, tensors = backbone_state(clf.backbone_)
    key = next(k for k in tensors if k.startswith("adapter::") and "lora_A" in k)
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ValueError, match="do not match its config"):
        backbone_from_state(config, missing)
    resized = {**tensors, key: np.zeros((3, 3), dtype=np.float32)}
    with pytest.raises(ValueError, match="do not fit"):
        backbone_from_state(config, resized)
    crafted = {**config, "adapter": {**config["adapter"], "peft_type": "os.system"}}
    with pytest.raises(ValueError):
        backbone_from_state(crafted, tensors)


@pytest.mark.parametrize("params, message", [
    (dict(freeze="backbone"), "freeze='backbone'"),
    (dict(l2sp=0.1), "l2sp=0.1"),
    (dict(adapter="qlora"), "adapter='qlora'"),
    (dict(adapter=peft.LoraConfig(target_modules=["nowhere"])), "target_modules"),
    (dict(adapter=peft.LoraConfig(target_modules="auto", modules_to_save=["2"])),
     "modules_to_save"),
])
def test_contradictions_are_refused_by_name(data, params, message):
    X, y = data
    with pytest.raises(ValueError, match=message):
        FineTunedClassifier(mlp(), **{"adapter": "lora", **FAST, **params}).fit(X, y)


def test_auto_finds_no_layer_in_a_network_without_linear_layers():
    X = np.random.RandomState(0).rand(16, 3, 8, 8).astype(np.float32)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="target_modules='auto' found no"):
        FineTunedClassifier(conv, adapter="lora", **FAST).fit(X, np.arange(16) % 2)


def test_lora_on_a_hugging_face_text_encoder(tiny_bert_path):
    y = np.array([("cat" in t) for t in TEXTS], dtype=int)
    clf = FineTunedClassifier("hf:" + tiny_bert_path, adapter="lora", lr=0.01,
                              max_epochs=2, batch_size=8, random_state=0).fit(TEXTS, y)
    targets = {name.rsplit(".", 1)[-1] for name, sub in clf.backbone_.module.named_modules()
               if hasattr(sub, "lora_A")}
    assert targets == {"query", "key", "value"}
    assert clf.predict_proba(TEXTS).shape == (len(TEXTS), 2)
    # chained: the tuned encoder as the next estimator's backbone, served merged
    chained = PretrainedFeatureTransformer(clf).fit(TEXTS)
    np.testing.assert_allclose(chained.transform(TEXTS), clf.transform(TEXTS), atol=1e-5)


def test_lora_on_a_timm_vision_transformer_with_checkpointing_and_accumulation():
    rng = np.random.RandomState(1)
    X = rng.rand(32, 3, 16, 16).astype(np.float32)
    y = (X[:, 0].mean(axis=(1, 2)) > 0.5).astype(int)
    clf = FineTunedClassifier(tiny_vit(), adapter="lora", gradient_checkpointing=True,
                              gradient_accumulation_steps=2, freeze_epochs=1, **FAST)
    clf.fit(X, y)
    adapted = {name.rsplit(".", 1)[-1] for name, sub in clf.backbone_.module.named_modules()
               if hasattr(sub, "lora_A")}
    assert adapted == {"qkv"}
    reg = FineTunedRegressor(tiny_vit(), adapter="lora", **FAST).fit(X, X[:, 0].mean((1, 2)))
    assert reg.predict(X).shape == (32,)


def test_an_adapter_fit_shares_the_cached_weights_and_never_writes_them(tiny_bert_path):
    from sktransfer.backbones import load_backbone_cached

    spec = "hf:" + tiny_bert_path
    before = load_backbone_cached(spec).module.state_dict()  # a copy of the cached network
    y = np.array([("cat" in t) for t in TEXTS], dtype=int)
    params = dict(lr=0.05, max_epochs=2, batch_size=8, random_state=0)
    first = FineTunedClassifier(spec, adapter="lora", **params).fit(TEXTS, y)
    second = FineTunedClassifier(spec, adapter="lora", **params).fit(TEXTS, y)

    def pointers(clf):
        return {name: p.data_ptr() for name, p in clf.backbone_.module.named_parameters()
                if name in clf.backbone_.fixed}

    # the pretrained weights are one copy in memory (the cached one), shared by both fits
    assert pointers(first) == pointers(second) and pointers(first)
    # ...and never written: the cached network is as it was loaded
    for name, value in load_backbone_cached(spec).module.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    # a plain fit afterwards still gets its own, trainable copy
    plain = FineTunedClassifier(spec, **{**params, "max_epochs": 1}).fit(TEXTS, y)
    assert all(p.requires_grad for p in plain.backbone_.module.parameters())
    assert not set(pointers(first).values()) & {
        p.data_ptr() for p in plain.backbone_.module.parameters()}


def test_a_pickle_holds_the_adapter_parameter_as_checked_plain_fields(data):
    X, y = data
    given = peft.LoraConfig(r=4, target_modules="auto")
    clf = FineTunedClassifier(mlp(), adapter=given, **FAST).fit(X, y)
    payload = pickle.dumps(clf)
    assert b"peft." not in payload  # no peft class (peft.tuners..., peft.utils...) to import
    loaded = pickle.loads(payload)
    assert type(loaded.adapter) is peft.LoraConfig and loaded.adapter.r == 4
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)


def test_a_crafted_adapter_costs_no_time_or_memory_before_it_is_refused(data):
    import time

    from sktransfer.backbones import backbone_from_state, backbone_state

    X, y = data
    clf = FineTunedClassifier(mlp(), adapter="lora", **FAST).fit(X, y)
    config, tensors = backbone_state(clf.backbone_)
    fields = {**config["adapter"]["fields"], "r": 4096, "init_lora_weights": "orthogonal"}
    crafted = {**config, "adapter": {**config["adapter"], "fields": fields}}
    start = time.perf_counter()
    with pytest.raises(ValueError, match="do not fit"):
        backbone_from_state(crafted, tensors)  # a 4096-rank orthogonal init is never built
    assert time.perf_counter() - start < 5


# -- files that hold the difference: the base by reference, checked by digest ---------------

def _size(path):
    return os.path.getsize(path)


def test_an_adapted_model_stores_its_base_by_reference_checked_when_loaded(
        data, tiny_bert_path, tmp_path):
    import shutil

    from transformers import BertModel

    base = tmp_path / "base"
    shutil.copytree(tiny_bert_path, base)
    spec = "hf:" + str(base)
    y = np.array([("cat" in t) for t in TEXTS], dtype=int)
    params = dict(lr=0.05, batch_size=8, random_state=0)
    clf = FineTunedClassifier(spec, adapter="lora", max_epochs=2, **params).fit(TEXTS, y)
    full = FineTunedClassifier(spec, max_epochs=1, **params).fit(TEXTS, y)
    expected = clf.predict_proba(TEXTS)
    sktransfer.save(clf, tmp_path / "lora.skt")
    sktransfer.save(clf, tmp_path / "whole.skt", include_base=True)
    sktransfer.save(full, tmp_path / "full.skt")
    # The default file holds the adapter, not the base: a fraction of a fully
    # fine-tuned model's (here the tokenizer files are a large part of both).
    assert _size(tmp_path / "lora.skt") < 0.4 * _size(tmp_path / "full.skt")
    assert _size(tmp_path / "whole.skt") > _size(tmp_path / "full.skt")
    payload = pickle.dumps(clf)
    assert len(payload) < 0.4 * len(pickle.dumps(full))
    with sktransfer.self_contained():
        whole_payload = pickle.dumps(clf)
    assert len(whole_payload) > len(pickle.dumps(full))
    (tmp_path / "lora.pkl").write_bytes(payload)
    # A module backbone has no spec to load again: its files hold the network.
    X, y_module = data
    module_clf = FineTunedClassifier(mlp(), adapter=peft.LoraConfig(r=4, target_modules="auto"),
                                     **FAST).fit(X, y_module)
    sktransfer.save(module_clf, tmp_path / "module.skt")
    (tmp_path / "module.pkl").write_bytes(pickle.dumps(module_clf))
    np.save(tmp_path / "X.npy", X)

    # A fresh offline process rebuilds the base from its directory.
    np.save(tmp_path / "texts.npy", np.array(TEXTS))
    script = (
        "import pickle, sys, numpy as np, sktransfer\n"
        "d = sys.argv[1]; X = list(np.load(d + '/texts.npy')); M = np.load(d + '/X.npy')\n"
        "out = [sktransfer.load(d + '/lora.skt').predict_proba(X),\n"
        "       pickle.load(open(d + '/lora.pkl', 'rb')).predict_proba(X),\n"
        "       sktransfer.load(d + '/module.skt').predict_proba(M),\n"
        "       pickle.load(open(d + '/module.pkl', 'rb')).predict_proba(M)]\n"
        "np.savez(d + '/out.npz', *out)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    module_expected = module_clf.predict_proba(X)
    for key, want in zip(sorted(out.files), [expected, expected, module_expected,
                                             module_expected]):
        np.testing.assert_allclose(out[key], want, rtol=0, atol=1e-6, err_msg=key)
    loaded = sktransfer.load(tmp_path / "module.skt")
    assert loaded.adapter.r == 4 and loaded.backbone_.fixed == module_clf.backbone_.fixed

    # Loaded, it refers to the same base again when saved.
    loaded = sktransfer.load(tmp_path / "lora.skt")
    sktransfer.save(loaded, tmp_path / "again.skt")
    assert _size(tmp_path / "again.skt") == _size(tmp_path / "lora.skt")
    # A base changed since it was loaded is no longer the one on disk: stored whole.
    with torch.no_grad():
        layer_norm = loaded.backbone_.module.model.embeddings.LayerNorm
        layer_norm.bias.add_(0.5)
    changed = loaded.predict_proba(TEXTS)
    sktransfer.save(loaded, tmp_path / "changed.skt")
    assert _size(tmp_path / "changed.skt") > _size(tmp_path / "full.skt")

    # The base changes (other weights in the same directory): refused, never served.
    torch.manual_seed(1)
    BertModel(BertModel.config_class.from_pretrained(base)).save_pretrained(base)
    from sktransfer.backbones import BaseNetworkError

    with pytest.raises(BaseNetworkError, match="not the one this model's adapter was trained") \
            as info:
        sktransfer.load(tmp_path / "lora.skt")
    assert "corrupted" not in str(info.value)  # the file is intact; its base is not
    with pytest.raises(BaseNetworkError, match="not the one this model's adapter was trained"):
        pickle.loads(payload)
    # The self-contained forms still hold the right models.
    for path, want in (("whole.skt", expected), ("changed.skt", changed)):
        np.testing.assert_allclose(sktransfer.load(tmp_path / path).predict_proba(TEXTS),
                                   want, rtol=0, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(pickle.loads(whole_payload).predict_proba(TEXTS), expected,
                               rtol=0, atol=1e-6)
    # The base is gone: the error says how to make a file that does not need it.
    shutil.rmtree(base)
    with pytest.raises(BaseNetworkError, match=r"cannot be loaded here.*include_base=True"):
        sktransfer.load(tmp_path / "lora.skt")


def test_the_same_random_state_gives_the_same_adapted_model(data):
    # peft draws the adapter's initial values from torch's global RNG: the fit seeds it.
    X, y = data
    net = mlp()

    def fit():
        torch.manual_seed(np.random.randint(1000))  # whatever the global stream holds
        return FineTunedClassifier(net, adapter="lora", **FAST).fit(X, y).predict_proba(X)

    np.testing.assert_array_equal(fit(), fit())


def test_an_adapter_trains_at_its_own_default_rate_with_either_objective():
    from sktransfer.finetune.base import DEFAULT_LR

    for objective in ("cross_entropy", "contrastive"):
        clf = FineTunedClassifier(nn.Linear(4, 2), adapter="lora", objective=objective)
        assert clf._lr() == DEFAULT_LR["adapter"] == 1e-2
    assert FineTunedClassifier(nn.Linear(4, 2), objective="contrastive")._lr() == 2e-4
