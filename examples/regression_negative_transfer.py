"""Regression: when transfer helps, and when it hurts (negative transfer).

A small network learns the source task y = 2x + 1 on x in [0, 10]. Two target
tasks are then learnt from a few noisy points:

- a *related* target, a parallel line y = 2x + 3 seen only on x in [0, 5]
  (8 points) and tested on all of [0, 10]: the source knows how y goes on
  where the target has no data;
- an *unrelated* target, y = sin(2x) (40 points on [0, 10]), where what the
  source learnt is of no use.

For each target, three models are compared on a dense test grid (R^2, higher
is better): the same network trained from scratch, the source network
fine-tuned, and the source network frozen with a Ridge regression on its
features. Over several random draws of the training points, each transfer
model's gain over training from scratch is reported with its standard error,
and called a help or a hurt only when it is more than twice that error.

Run: ``python examples/regression_negative_transfer.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import FineTunedRegressor, PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4, 5, 6, 7]
EPOCHS = 20 if QUICK else 300
torch.set_num_threads(1)  # a network this small runs fastest on one thread


def mlp():
    return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())


def as_input(x):
    return ((x - 5) / 5).astype(np.float32)[:, None]  # x in [0, 10] -> one column in [-1, 1]


x_source = np.linspace(0, 10, 100)
source = FineTunedRegressor(mlp, lr=3e-2, max_epochs=EPOCHS, random_state=0)
source.fit(as_input(x_source), 2 * x_source + 1)
print(f"source task y = 2x + 1: R^2 {source.score(as_input(x_source), 2 * x_source + 1):.3f}")

# name: (function, training range, number of training points)
targets = {"related: y = 2x + 3": (lambda x: 2 * x + 3, (0, 5), 8),
           "unrelated: y = sin(2x)": (lambda x: np.sin(2 * x), (0, 10), 40)}
x_test = np.linspace(0, 10, 500)
for task, (f, (low, high), n) in targets.items():
    scores = {"from scratch": [], "fine-tuned source": [], "frozen source + Ridge": []}
    for seed in SEEDS:
        rng = np.random.RandomState(seed)
        x = rng.uniform(low, high, n)
        y = f(x) + rng.normal(0, 0.3, n)
        models = {
            "from scratch": FineTunedRegressor(mlp, weights=None, lr=3e-2,
                                               max_epochs=EPOCHS, random_state=seed),
            "fine-tuned source": FineTunedRegressor(source, lr=3e-2, max_epochs=EPOCHS,
                                                    random_state=seed),
            "frozen source + Ridge": make_pipeline(PretrainedFeatureTransformer(source),
                                                   Ridge(alpha=1e-2)),
        }
        for name, model in models.items():
            model.fit(as_input(x), y)
            scores[name].append(model.score(as_input(x_test), f(x_test)))
    print(f"\ntarget {task}, {n} noisy points on [{low}, {high}], test R^2 on [0, 10]:")
    scratch = np.array(scores["from scratch"])
    for name, r2 in scores.items():
        line = f"  {name:<22} {np.mean(r2):7.3f} ± {np.std(r2):.3f}"
        if name != "from scratch" and len(SEEDS) > 1:
            gain = np.array(r2) - scratch  # paired: same points for every model
            se = gain.std(ddof=1) / np.sqrt(len(gain))
            verdict = ("transfer helps" if gain.mean() > 2 * se else
                       "negative transfer" if gain.mean() < -2 * se else "no clear difference")
            line += f"   gain {gain.mean():+.3f} ± {se:.3f}: {verdict}"
        print(line)
