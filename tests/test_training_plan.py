"""Training receives a plan, not an estimator (issue 28).

The fine-tuners hand :mod:`sktransfer.training` a frozen
:class:`~sktransfer.training.plan.TrainingPlan` and keep the net and history
it returns: no code under ``sktransfer/training/`` reads an attribute of an
estimator object. A recording subclass notes every attribute read made from
a frame whose file lies under that folder.
"""

import dataclasses
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

import sktransfer.training
from sktransfer import FineTunedClassifier

TRAINING_DIR = os.path.dirname(os.path.abspath(sktransfer.training.__file__)) + os.sep

#: (file, line, attribute) of each read made from training code; the tests clear it.
READS = []


class RecordingClassifier(FineTunedClassifier):
    """A FineTunedClassifier noting the attribute reads made from sktransfer/training/."""

    def __getattribute__(self, name):
        caller = sys._getframe(1).f_code.co_filename
        if os.path.abspath(caller).startswith(TRAINING_DIR):
            READS.append((os.path.basename(caller), sys._getframe(1).f_lineno, name))
        return super().__getattribute__(name)


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(24, 4).astype(np.float32)
    return X, np.where(X[:, 0] > 0.5, 1, 0)


def backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU())


@pytest.fixture(autouse=True)
def clean_reads():
    READS.clear()
    yield
    READS.clear()


def test_the_recorder_sees_a_read_made_from_training_code(data):
    # The detector itself: code compiled as if it lay under training/ is seen.
    clf = RecordingClassifier(backbone(), max_epochs=1, random_state=0)
    code = compile("est._lr(); est.batch_size", TRAINING_DIR + "run.py", "exec")
    exec(code, {"est": clf})
    assert [name for _, _, name in READS] == ["_lr", "batch_size"]
    READS.clear()
    clf._lr()  # from this file: not training code
    assert READS == []


@pytest.mark.parametrize("params", [
    {"freeze_epochs": 1, "early_stopping": 1, "validation_fraction": 0.25},
    {"objective": "contrastive", "n_pairs": 2},
    {"keep_optimizer": True, "l2sp": 0.1},
], ids=["head-first+early-stopping", "contrastive", "l2sp+kept-optimizer"])
def test_fit_and_partial_fit_pass_no_estimator_into_training(data, params):
    X, y = data
    clf = RecordingClassifier(backbone(), max_epochs=2, batch_size=8, random_state=0,
                              **params)
    clf.fit(X, y)
    clf.partial_fit(X, y)
    # An unpickled model rebuilds its net (resuming a kept optimizer state).
    pickle.loads(pickle.dumps(clf)).partial_fit(X, y)
    assert READS == [], f"training/ read estimator attributes: {READS}"
    assert len(clf.history_) == 3 and clf.net_.history_ is clf.history_


def test_adaptation_passes_no_estimator_into_training(data):
    X, y = data
    y = y.copy()
    y[:8] = -1  # unlabelled target samples
    clf = RecordingClassifier(backbone(), adaptation="coral", freeze="none", max_epochs=1,
                              batch_size=8, random_state=0).fit(X, y)
    assert READS == [], f"training/ read estimator attributes: {READS}"
    assert "adaptation_loss" in clf.history_[-1, "batches"][0]


def test_the_plan_is_a_frozen_dataclass(data):
    from sktransfer.training.plan import TrainingPlan
    from sktransfer.training.run import TrainingRun

    X, y = data
    clf = FineTunedClassifier(backbone(), max_epochs=1, random_state=0).fit(X, y)
    plan = clf._training_plan()
    assert isinstance(plan, TrainingPlan) and dataclasses.is_dataclass(plan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.lr = 1.0
    assert plan.head is clf.head_ and plan.backbone is clf.backbone_
    assert plan.n_frozen == 0 and plan.objective == "cross_entropy"
    # The run is made from a plan, never from an estimator.
    trained = TrainingRun(plan, net=clf.net_).fit_model(clf._samples(X, False, y), None, 1,
                                                         first=False)
    assert trained.net is clf.net_ and trained.history is clf.history_
    assert not trained.built
