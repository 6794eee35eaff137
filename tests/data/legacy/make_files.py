"""Write the model files tests/test_legacy_files.py loads: pickles and .skt files.

They were written by sktransfer 0.1.0 before its modules were reorganized
(commit daa3469), so the test checks that files users wrote before a move of
the code still load and give the same outputs. Run from the repository root::

    python tests/data/legacy/make_files.py tests/data/legacy

Rerunning it with a later version writes new files: keep the old ones.
"""

import os
import sys
import tempfile

import joblib
import numpy as np
import torch
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer


def tiny_bert(folder):
    """A one-layer BERT with a 40-word vocabulary, saved as a Hugging Face directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat",
             "on", "mat", "ran", "far", "big", "small", "red", "blue"]
    words += list("abcdefghijklmnopqrstuvwxyz")
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(words) + "\n")
    BertTokenizerFast(os.path.join(folder, "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)


def main(out):
    rng = np.random.RandomState(0)
    X = rng.rand(24, 12).astype(np.float32)
    y = np.arange(24) % 3
    images = (rng.rand(6, 32, 32, 3) * 255).astype(np.uint8)
    texts = ["the cat sat on the mat", "a big dog ran far", "red", "blue small cat"]

    def module():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6))

    models = {
        "transformer_module": (PretrainedFeatureTransformer(module(), batch_size=8).fit(X), X),
        "classifier_module": (FineTunedClassifier(
            module(), head=[5], dropout=0.1, l2sp=0.01, freeze_epochs=1, max_epochs=3,
            batch_size=8, keep_optimizer=True, random_state=0).fit(X, y), X),
        "regressor_module": (FineTunedRegressor(
            module(), max_epochs=2, batch_size=8, random_state=0).fit(X, X[:, :2]), X),
        "transformer_timm": (PretrainedFeatureTransformer(
            "timm:test_resnet", weights=None, image_size=32, pooling="max").fit(images),
            images),
        "classifier_timm_groups": (FineTunedClassifier(
            "timm:test_vit", weights=None, image_size=32, freeze=2, augment=True,
            max_epochs=1, batch_size=6, random_state=0).fit(images, [0, 1] * 3), images),
    }
    with tempfile.TemporaryDirectory() as folder:
        tiny_bert(folder)
        models["transformer_hf"] = (PretrainedFeatureTransformer(
            f"hf:{folder}", weights="DEFAULT", pooling="cls").fit(texts), texts)
        for name, (est, data) in models.items():
            joblib.dump(est, os.path.join(out, f"{name}.pkl"))
            sktransfer.save(est, os.path.join(out, f"{name}.skt"))
            outputs = {"transform": est.transform(data)}
            if hasattr(est, "predict"):
                outputs["predict"] = est.predict(data)
            if hasattr(est, "predict_proba"):
                outputs["predict_proba"] = est.predict_proba(data)
            inputs = np.array(data, dtype=object) if isinstance(data, list) else data
            np.savez(os.path.join(out, f"{name}.npz"), **outputs,
                     **({"X": inputs} if not isinstance(data, list) else {}))
    np.save(os.path.join(out, "texts.npy"), np.array(texts))


if __name__ == "__main__":
    main(sys.argv[1])
