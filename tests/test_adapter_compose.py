"""adapter= composed with the other training modes (issue 30): the contrastive objective,
domain adaptation, and LoRA on the image tower of a CLIP model served merged."""

import numpy as np
import pytest
import torch

from sktransfer import FineTunedClassifier
from sktransfer.engine.resident import _HELD
from sktransfer.training.adaptation import coral_loss, mmd_loss
from test_adapters import FAST, data, mlp  # noqa: F401  (data: the module's fixture)

peft = pytest.importorskip("peft")

#: rank-8 LoRA on the MLP's 8 -> 16 and 16 -> 16 layers: A (8 x in) and B (out x 8) of each
MLP_LORA_VALUES = (8 * 8 + 16 * 8) + (8 * 16 + 16 * 8)


def _split(clf, pretrained):
    """The fitted backbone's tensors that kept their pretrained value, and those that moved
    (an adapter's tensors count as moved: none existed before the fit)."""
    kept, changed = [], []
    for name, value in clf.backbone_.module.state_dict().items():
        plain = name.replace(".base_layer.", ".")
        if plain in pretrained and torch.equal(value, pretrained[plain]):
            kept.append(name)
        else:
            changed.append(name)
    return kept, changed


def _assert_only_the_adapter_trained(clf, pretrained):
    module = clf.backbone_.module
    kept, changed = _split(clf, pretrained)
    assert sorted(kept) == sorted(n for n in module.state_dict() if "base_layer" in n)
    assert changed and all("lora_" in n for n in changed)
    trainable = sorted(n for n, _ in module.named_parameters() if n not in clf.backbone_.fixed)
    assert trainable == sorted(changed)
    assert sum(p.numel() for n, p in module.named_parameters() if n in trainable) == \
        MLP_LORA_VALUES
    # the adapter really trained: lora_B starts at zero
    assert all(p.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)


# -- the contrastive objective ---------------------------------------------------------

def test_contrastive_training_moves_only_the_adapter_and_the_head(data):  # noqa: F811
    X, y = data
    params = dict(FAST, objective="contrastive", adapter="lora", n_pairs=2, batch_size=32)
    clf = FineTunedClassifier(mlp(), **params).fit(X, y)
    _assert_only_the_adapter_trained(clf, mlp().state_dict())
    # the pair loss fell: the adapter learned from the pairs (measured 0.41 -> 0.21; flat
    # at 0.43 when the adapter barely trains, backbone_lr_mult=1e-6)
    losses = clf.history_[:, "train_loss"]
    assert losses[-1] < 0.75 * losses[0]
    # the head, fitted on the tuned embeddings, predicts (measured 0.875; 0.74 untuned)
    assert all(p.abs().sum() > 0 for p in clf.head_.parameters())
    assert clf.score(X, y) >= 0.8
    # seeded: a second fit gives the same model, to the bit (mlp() also seeds torch's
    # global generator, from which peft draws the adapter's initial weights)
    again = FineTunedClassifier(mlp(), **params).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    # predictions run merged and equal the unmerged network
    with torch.no_grad():
        unmerged = clf.head_(clf.backbone_.module(torch.from_numpy(X))).softmax(1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), unmerged, rtol=0, atol=1e-5)


# -- domain adaptation -------------------------------------------------------------------

@pytest.fixture(scope="module")
def shift(data):  # noqa: F811
    """Source: the 8-feature task; target: the same task dimmed, shifted and noisy."""
    X, y = data
    rng = np.random.RandomState(1)
    Xt = (0.5 * X + 0.4 + rng.normal(0, 0.1, X.shape)).astype(np.float32)
    joint = np.concatenate([X, Xt])
    domain = np.concatenate([np.ones(len(X), int), -np.ones(len(Xt), int)])
    labels = np.concatenate([y, -np.ones(len(Xt), int)])
    return X, Xt, joint, labels, domain


def _distance(clf, Xs, Xt, fn):
    with torch.no_grad():
        return float(fn(torch.from_numpy(clf.transform(Xs)), torch.from_numpy(clf.transform(Xt))))


ADAPTED = dict(FAST, adapter="lora", max_epochs=4)


@pytest.fixture(scope="module")
def source_only_lora(shift):
    """The same LoRA fit on the labelled source alone."""
    Xs, _, _, y, _ = shift
    return FineTunedClassifier(mlp(), **ADAPTED).fit(Xs, y[:len(Xs)])


# CORAL's loss is small on these embeddings (about 1e-5): its weight is large to matter.
@pytest.mark.parametrize("method, weight, distance", [("coral", 1000.0, coral_loss),
                                                      ("mmd", 5.0, mmd_loss),
                                                      ("dann", 5.0, None)])
def test_domain_adaptation_trains_the_adapter_towards_the_target(shift, source_only_lora,
                                                                 method, weight, distance):
    Xs, Xt, X, y, domain = shift
    adapted = FineTunedClassifier(mlp(), adaptation=method, adaptation_weight=weight, **ADAPTED)
    adapted.fit(X, y, sample_domain=domain)
    _assert_only_the_adapter_trained(adapted, mlp().state_dict())
    assert set(adapted.classes_) == {0, 1}  # -1 marks the unlabelled target, no class
    losses = [b["adaptation_loss"] for epoch in adapted.history_ for b in epoch["batches"]]
    assert len(losses) == sum(len(e["batches"]) for e in adapted.history_)
    assert np.isfinite(losses).all() and any(loss > 0 for loss in losses)
    if distance is None:
        # DANN: the domain classifier stays near chance (ln 2 = 0.69 per sample, times the
        # weight) because the adapter, through the reversed gradient, hides the domain.
        # Measured: 0.56 in the last epoch; 0.44 when the adapter barely trains
        # (backbone_lr_mult=1e-6) and the classifier wins.
        last = np.mean([b["adaptation_loss"] for b in adapted.history_[-1]["batches"]])
        assert last / weight > 0.5
        return
    # the adapter moved the target's embeddings towards the source's, compared with the
    # same LoRA fit on the source alone (measured: 0.59x for CORAL, 0.33x for MMD)
    plain = source_only_lora
    assert _distance(adapted, Xs, Xt, distance) < 0.8 * _distance(plain, Xs, Xt, distance)


# -- LoRA on the image tower of a CLIP model, served merged --------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP (2 vision layers of width 32) saved with its processor and tokenizer."""
    pytest.importorskip("transformers")
    from backbones.test_hf_vision import _build

    return _build("clip", tmp_path_factory.mktemp("clip") / "clip")


def test_lora_on_a_clip_image_tower_serves_merged_as_the_unmerged_forward(clip_dir):
    from sktransfer import load_backbone

    rng = np.random.RandomState(0)
    X = rng.randint(0, 60, size=(32, 32, 32, 3)).astype(np.uint8)
    y = np.arange(32) % 2
    X[y == 0, :, :16] += 150  # bright left half against bright right half
    X[y == 1, :, 16:] += 150
    spec = "hf-image:" + str(clip_dir)
    clf = FineTunedClassifier(spec, adapter="lora", lr=0.01, max_epochs=3, batch_size=16,
                              validation_fraction=0, random_state=0).fit(X, y)
    module = clf.backbone_.module
    adapted = sorted(name for name, sub in module.named_modules() if hasattr(sub, "lora_A"))
    # target_modules="auto": the attention projections of the vision tower, nothing else
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj"}
    assert len(adapted) == 2 * 3 and all("vision_model.encoder.layers." in n for n in adapted)
    trainable = [p for n, p in module.named_parameters() if n not in clf.backbone_.fixed]
    assert sum(p.numel() for p in trainable) == 2 * 3 * 8 * (32 + 32)
    assert all(p.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)
    # the pretrained weights are as loaded
    pretrained = load_backbone(spec).module.state_dict()
    kept, _ = _split(clf, pretrained)
    assert len(kept) == len(pretrained)

    proba = clf.predict_proba(X)
    engine = _HELD[clf].engines["proba"][2]
    # the engine's copy holds plain layers, the adapter merged into them...
    assert not any("lora" in name for name, _ in engine.module.named_parameters())
    # ...and the fitted model keeps its adapter unmerged: the unmerged forward, by hand
    with torch.no_grad():
        batch = clf.backbone_.preprocess(torch.from_numpy(X).permute(0, 3, 1, 2))
        embedding = module(batch)
        unmerged = clf.head_(embedding).softmax(1).numpy()
    np.testing.assert_allclose(proba, unmerged, rtol=0, atol=1e-5)
    np.testing.assert_allclose(clf.transform(X), embedding.numpy(), rtol=0, atol=1e-5)
    # the merge does not make the engine look stale: the next call reuses it
    clf.predict_proba(X[:4])
    assert _HELD[clf].engines["proba"][2] is engine
