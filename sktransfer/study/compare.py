"""Does transfer help here? :func:`compare_transfer` and its :class:`TransferReport`.

Transfer learning is a bet that what a backbone learned on its source
helps the target task. The bet can be lost (negative transfer: a source
unlike the target, a broken checkpoint), and the only way to know is to
measure. :func:`compare_transfer` trains the usual ways of using a backbone
side by side with the same architecture trained from scratch, on the very
same cross-validation splits, and reports each method's gain over scratch
with a paired confidence interval and a plain verdict.
"""

import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.model_selection import check_cv, cross_validate
from sklearn.utils.multiclass import type_of_target

from ..finetune import FineTunedClassifier, FineTunedRegressor
from .adaptation import ADAPTATION_METHODS, adaptation_method

#: The built-in methods compared by default, in the order they are reported.
METHODS = ("scratch", "linear_probe", "fine_tune", "lp_ft", "l2sp")

#: Built-in methods to name in ``methods`` (classification only): not run by
#: default, to keep the default study's cost.
MORE_METHODS = ("contrastive",)

#: The method every gain is measured against; with ``source``, "source_only"
#: when the study has no "scratch".
BASELINE = "scratch"

#: Confidence level of the intervals on the gains (and on the plotted scores).
CONFIDENCE = 0.95

#: L2-SP strength of the "l2sp" method: strong enough to keep the weights near
#: the source's on a small target set, weak enough not to freeze them.
L2SP_ALPHA = 0.01

_TASKS = {"classification": FineTunedClassifier, "regression": FineTunedRegressor}


def compare_transfer(X, y, backbone, *, methods=METHODS, cv=5, scoring=None,
                     estimator_params=None, random_state=None, n_jobs=None, verbose=0,
                     task=None, source=None, unlabelled=None):
    """Score each way of using ``backbone`` against training it from scratch.

    Every method is cross-validated on the same splits, so the per-split
    differences ``method - scratch`` are paired: a split that is hard for one
    method is hard for the others, and that shared noise cancels out of the
    gain. The 95% t-interval of the mean of these differences gives the
    verdict.

    Parameters
    ----------
    X : array-like, list of paths, PIL images or strings
        Samples of the kind the backbone takes.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Class labels (the estimators are :class:`~sktransfer.FineTunedClassifier`)
        or continuous targets (:class:`~sktransfer.FineTunedRegressor`).
    backbone : str, nn.Module, callable or fitted estimator
        The backbone under study, as the fine-tuners take it.
    methods : sequence of str or dict, default=METHODS
        Built-in methods, each an estimator on ``backbone``:

        - ``"scratch"``: the same architecture from random initialization
          (``weights=None``), the baseline of every gain;
        - ``"linear_probe"``: the frozen backbone with a new head
          (``freeze="backbone"``);
        - ``"fine_tune"``: the whole network trains;
        - ``"lp_ft"``: the head fitted to convergence on the frozen
          embeddings and trained alone for the first quarter of the epochs
          (at least one), then everything (``freeze_epochs``; unless
          ``estimator_params`` sets ``lr``, at the smaller default rate of
          head-first training, see :class:`~sktransfer.FineTunedClassifier`);
        - ``"l2sp"``: fine-tuning with the L2-SP penalty towards the
          pretrained weights (``l2sp=0.01``, ``weight_decay=0``);
        - ``"contrastive"`` (classification; not in the default list): the
          backbone trained on label pairs, then the head fitted
          (``objective="contrastive"``), the few-labels recipe.

        A dict maps names to estimators, to add your own (any scikit-learn
        estimator, such as a Pipeline on frozen features); a value of
        ``None`` stands for the built-in method of that name, e.g.
        ``{**dict.fromkeys(METHODS), "features + SVC": pipe}``. Without a
        ``"scratch"`` method the gain columns are NaN and the verdicts
        ``"no baseline"``: the scores still compare.

        With ``source``, the domain-adaptation methods: ``"source_only"``
        (fine-tuning on the source samples and the split's labelled target
        samples, the baseline when there is no ``"scratch"``), ``"coral"``,
        ``"mmd"`` and ``"dann"`` (the same, with ``adaptation`` set and the
        ``unlabelled`` samples in the adaptation term); see :doc:`/adaptation`.
    cv : int, cross-validation splitter or iterable, default=5
        As in :func:`sklearn.model_selection.cross_validate`: an int gives
        (stratified, for classification) unshuffled K folds; a splitter
        such as ``StratifiedShuffleSplit(train_size=50)`` or a list of
        ``(train, test)`` index pairs studies few labels. The splits are
        drawn once and every method gets the same ones. At least 2.
    scoring : str or callable, optional
        One scikit-learn scorer; by default the estimators' ``score``
        (accuracy or R^2). Higher must be better, so that a positive gain
        means the method helps: use ``"neg_..."`` scorers for errors.
    estimator_params : dict, optional
        Parameters of every built-in estimator (such as ``max_epochs``,
        ``lr``, ``head``). A method's own settings listed above take
        precedence, with a warning where they override one given here.
    random_state : int or None, default=None
        ``random_state`` of every built-in estimator (unless
        ``estimator_params`` sets it): with an int, the methods share
        shuffling and initialization seeds, and a study on the CPU repeats
        exactly.
    n_jobs : int, optional
        Splits fitted in parallel, passed to ``cross_validate``.
    verbose : int, default=0
        1: a line per method as it finishes; 2: also ``cross_validate``'s
        own messages.
    task : {"classification", "regression"}, optional
        By default from your estimators in ``methods`` if any, else from
        ``y`` (:func:`~sklearn.utils.multiclass.type_of_target`). Set it for
        a regression target whose values are all integers, which would
        otherwise read as class labels.
    source : tuple (X_source, y_source), optional
        Labelled samples of the source domain, for the adaptation methods;
        ``X`` and ``y`` are then the target domain's, and every score is on
        the target's test rows.
    unlabelled : array-like, optional
        The target samples the adaptation methods see without labels. By
        default all of ``X`` (transductive, as in the unsupervised
        domain-adaptation benchmarks: the test rows' inputs, never their
        labels, enter training).

    Returns
    -------
    TransferReport
        ``summary`` (one row per method, with the verdicts), ``results``
        (one row per method and split) and ``plot()``.

    Raises
    ------
    ValueError
        For an unknown method name, fewer than 2 splits, a multi-metric
        ``scoring``, or a target of neither kind.

    See Also
    --------
    TransferReport : the table, the per-split scores and the plot.

    Notes
    -----
    Folds of K-fold cross-validation share most of their training data, so
    their scores are not independent and the t-interval is then somewhat
    too narrow (Nadeau and Bengio, 2003). Splits with disjoint few-label
    training sets, as in a few-label study, are closer to independent.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer.study import compare_transfer
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(60, 4).astype(np.float32)
    >>> y = (X[:, 0] > 0.5).astype(int)
    >>> report = compare_transfer(X, y, nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
    ...                           methods=["scratch", "linear_probe"], cv=3,
    ...                           estimator_params={"max_epochs": 1}, random_state=0)
    >>> report.summary.columns.tolist()
    ['score_mean', 'score_std', 'gain_vs_scratch', 'gain_ci_low', 'gain_ci_high', 'verdict', \
'fit_seconds']
    >>> report.summary.loc["scratch", "verdict"]
    'baseline'
    >>> len(report.results)
    6
    """
    chosen = _check_methods(methods)
    if isinstance(scoring, (list, tuple, set, dict)):
        raise ValueError("compare_transfer takes one scoring metric (a string or a callable); "
                         f"got {scoring!r}")
    task = _infer_task(y, chosen, task)
    estimators = _build_estimators(chosen, backbone, task, estimator_params, random_state)
    for name in [n for n in estimators if n in ADAPTATION_METHODS and chosen[n] is None]:
        if source is None:
            raise ValueError(f"the {name!r} method needs source=(X_source, y_source): "
                             "labelled samples of the source domain")
        estimators[name] = adaptation_method(name, estimators[name], source,
                                             X if unlabelled is None else unlabelled)
    splits = _materialize_splits(cv, X, y, task)
    rows = _cross_validate_each(estimators, X, y, splits, scoring, n_jobs, verbose)
    results = pd.DataFrame(rows, columns=["method", "split", "score", "fit_seconds"])
    return TransferReport(results, task=task, scoring=scoring)


def _cross_validate_each(estimators, X, y, splits, scoring, n_jobs, verbose):
    """One row per method and split: its test score and training time."""
    rows = []
    width = len(str(len(estimators)))
    start = time.perf_counter()
    for i, (name, estimator) in enumerate(estimators.items(), 1):
        # error_score="raise": a method that fails to train is a bug to see,
        # not a NaN to average.
        scores = cross_validate(estimator, X, y, cv=splits, scoring=scoring, n_jobs=n_jobs,
                                verbose=max(verbose - 1, 0), error_score="raise")
        rows += [{"method": name, "split": k, "score": float(score), "fit_seconds": float(sec)}
                 for k, (score, sec) in enumerate(zip(scores["test_score"], scores["fit_time"]))]
        if verbose:
            print(f"[{i:>{width}}/{len(estimators)}] {name}: score "
                  f"{np.mean(scores['test_score']):.3f} over {len(splits)} splits "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


class TransferReport:
    """What :func:`compare_transfer` measured, and its verdicts.

    Parameters
    ----------
    results : pandas.DataFrame
        One row per method and split: ``method``, ``split``, ``score``,
        ``fit_seconds``; the same splits for every method.
    task : {"classification", "regression"}
        The kind of target.
    scoring : str, callable or None, default=None
        The scorer; ``None`` is the estimators' ``score``.

    Attributes
    ----------
    results : pandas.DataFrame
        The per-split scores, as given.
    summary : pandas.DataFrame
        Indexed by method: ``score_mean`` and ``score_std`` (sample standard
        deviation over splits); ``gain_vs_scratch`` (``gain_vs_source_only``
        in an adaptation study without scratch), the mean per-split
        difference ``score - scratch score``, and ``gain_ci_low`` /
        ``gain_ci_high``, its 95% paired t-interval; ``verdict``:
        ``"helps"`` where the interval lies above 0, ``"hurts"`` where it
        lies below, ``"no clear difference"`` where it holds 0, ``"baseline"``
        for scratch itself and ``"no baseline"`` for all when there is no
        scratch method; ``fit_seconds``, the mean training time.
    n_splits : int
        Splits per method.
    baseline : str or None
        The method the gains are measured against.

    Examples
    --------
    >>> import pandas as pd
    >>> from sktransfer.study import TransferReport
    >>> results = pd.DataFrame({"method": ["scratch"] * 3 + ["fine_tune"] * 3,
    ...                         "split": [0, 1, 2] * 2,
    ...                         "score": [0.5, 0.6, 0.55, 0.8, 0.85, 0.9],
    ...                         "fit_seconds": [1.0] * 6})
    >>> report = TransferReport(results, task="classification")
    >>> report.summary["verdict"].tolist()
    ['baseline', 'helps']
    >>> gain = report.summary.loc["fine_tune", ["gain_vs_scratch", "gain_ci_low", "gain_ci_high"]]
    >>> gain.astype(float).round(3).tolist()
    [0.3, 0.176, 0.424]
    """

    def __init__(self, results, *, task, scoring=None):
        self.results = results
        self.task = task
        self.scoring = scoring
        self.n_splits = int(results["split"].nunique())
        self.baseline = _baseline(list(dict.fromkeys(results["method"])))
        self.summary = _summarize(results, self.baseline)

    def __repr__(self):
        return (f"TransferReport({self.task}, {self.n_splits} splits, "
                f"score: {self._score_label()})\n{self.summary.to_string()}")

    def plot(self, ax=None):
        """What the verdicts are decided on: each method's paired gain over the baseline.

        Each method's mean per-split difference from the baseline (scratch,
        or source-only in an adaptation study) with its 95% t-interval,
        coloured by verdict, the per-split differences in grey and zero
        marked: "helps" is an interval right of zero. The labels give each
        method's mean score. Without a baseline, the mean scores and their
        intervals are drawn instead.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; by default on a new Figure.

        Returns
        -------
        matplotlib.figure.Figure
            The figure, not shown (save it with ``fig.savefig(path)``).
        """
        if ax is None:
            # A bare Figure, not pyplot's: nothing global, nothing shown.
            from matplotlib.figure import Figure

            fig = Figure(figsize=(7, 0.6 * len(self.summary) + 1.5), layout="constrained")
            ax = fig.subplots()
        fig = ax.figure
        scores = self.results.pivot(index="split", columns="method", values="score")
        base = self.baseline
        names = [n for n in self.summary.index if n != base]
        for row, name in enumerate(names):
            values = scores[name] - scores[base] if base else scores[name]
            low, high = _t_interval(values.to_numpy())
            mean = float(values.mean())
            ax.errorbar(mean, row, xerr=[[mean - low], [high - mean]], fmt="o", capsize=4,
                        color=_VERDICT_COLORS.get(self.summary.loc[name, "verdict"], "C0"))
            ax.plot(values, np.full(self.n_splits, row), ".", color="grey", alpha=0.5)
        if base:
            ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(names)), [
            f"{name} ({self.summary.loc[name, 'verdict']})\n"
            f"{self._score_label()} {self.summary.loc[name, 'score_mean']:.3f}"
            for name in names])
        ax.invert_yaxis()
        what = (f"gain in {self._score_label()} over {base} "
                f"({self.summary.loc[base, 'score_mean']:.3f}), paired per split"
                if base else self._score_label())
        # two lines: in one, the label outgrows a narrow panel and is cut
        ax.set_xlabel(f"{what}:\nmean and {CONFIDENCE:.0%} interval over {self.n_splits} "
                      "splits (grey: each split)")
        ax.grid(axis="x", alpha=0.3)
        return fig

    def _score_label(self):
        if self.scoring is None:
            return "accuracy" if self.task == "classification" else "R^2"
        return self.scoring if isinstance(self.scoring, str) else "score"


_VERDICT_COLORS = {"helps": "tab:green", "hurts": "tab:red", "baseline": "black",
                   "no clear difference": "tab:grey"}


def _baseline(names):
    """The method gains are measured against: scratch, else source_only, else None."""
    return next((n for n in (BASELINE, "source_only") if n in names), None)


def _summarize(results, baseline):
    """The summary table of :class:`TransferReport` from its per-split results."""
    scores = results.pivot(index="split", columns="method", values="score")
    names = list(dict.fromkeys(results["method"]))
    fit_seconds = results.groupby("method")["fit_seconds"].mean()
    rows = []
    for name in names:
        row = {"score_mean": float(scores[name].mean()),
               "score_std": float(scores[name].std(ddof=1))}
        row.update(_gain(scores, name, baseline))
        row["fit_seconds"] = float(fit_seconds[name])
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(names, name="method"))


def _gain(scores, name, baseline):
    """Gain columns and verdict of method ``name`` against the baseline."""
    column = f"gain_vs_{baseline or BASELINE}"
    nan = {column: np.nan, "gain_ci_low": np.nan, "gain_ci_high": np.nan}
    if baseline is None:
        return {**nan, "verdict": "no baseline"}
    if name == baseline:
        return {**nan, "verdict": "baseline"}
    diff = (scores[name] - scores[baseline]).to_numpy()
    low, high = _t_interval(diff)
    verdict = "helps" if low > 0 else "hurts" if high < 0 else "no clear difference"
    return {column: float(diff.mean()), "gain_ci_low": low, "gain_ci_high": high,
            "verdict": verdict}


def _t_interval(values, confidence=CONFIDENCE):
    """Student-t interval of the mean of ``values`` (a point when they are all equal).

    Examples
    --------
    >>> low, high = _t_interval(np.array([0.1, 0.2, 0.3]))
    >>> round(low, 3), round(high, 3)
    (-0.048, 0.448)
    >>> _t_interval(np.array([0.5, 0.5]))
    (0.5, 0.5)
    """
    n = len(values)
    mean = float(np.mean(values))
    sem = float(np.std(values, ddof=1)) / np.sqrt(n)
    # scipy's t.interval gives NaN for a zero scale; identical differences
    # are a point, which is what they are.
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * sem)
    return mean - half, mean + half


def _check_methods(methods):
    """``methods`` as an ordered dict of name -> user estimator (None: built-in)."""
    if isinstance(methods, str):
        raise ValueError(f"methods must be a sequence of method names or a dict; got the "
                         f"string {methods!r} (write [{methods!r}] for one method)")
    chosen = dict(methods) if isinstance(methods, dict) else dict.fromkeys(methods)
    if not chosen:
        raise ValueError("methods is empty: name at least one method, such as "
                         f"{list(METHODS)}")
    builtin = METHODS + MORE_METHODS + ADAPTATION_METHODS
    unknown = [name for name, est in chosen.items() if est is None and name not in builtin]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r}; the built-in methods are "
            f"{', '.join(map(repr, builtin))}. To compare your own estimator, pass a dict: "
            "methods={'name': estimator, 'scratch': None, ...}")
    bad = [name for name, est in chosen.items() if est is not None and not hasattr(est, "fit")]
    if bad:
        raise TypeError(f"methods[{bad[0]!r}] must be an estimator with fit (or None for a "
                        f"built-in method); got {chosen[bad[0]]!r}")
    return chosen


def _infer_task(y, chosen, task):
    """"classification" or "regression": ``task``, else the user's estimators, else ``y``."""
    if type_of_target(y, input_name="y") == "multilabel-indicator":
        raise ValueError("compare_transfer does not support multilabel targets: its folds are "
                         "stratified by one class per sample and its probes are "
                         "single-label classifiers. Compare per label (one column of y at a "
                         "time), or fit FineTunedClassifier on the indicator matrix directly.")
    if task is not None:
        if task not in _TASKS:
            raise ValueError(f"task must be 'classification', 'regression' or None; "
                             f"got {task!r}")
        return task
    own = [est for est in chosen.values() if est is not None]
    kinds = {"classification" for est in own if is_classifier(est)}
    kinds |= {"regression" for est in own if is_regressor(est)}
    if len(kinds) > 1:
        raise ValueError("methods mixes classifiers and regressors; compare estimators of "
                         "one kind")
    if kinds:
        return kinds.pop()
    kind = type_of_target(y, input_name="y")
    if kind in ("binary", "multiclass"):
        return "classification"
    if kind in ("continuous", "continuous-multioutput"):
        return "regression"
    raise ValueError(f"compare_transfer needs class labels or continuous targets; y is "
                     f"{kind!r}. Pass task='classification' or 'regression' to choose.")


def _build_estimators(chosen, backbone, task, estimator_params, random_state):
    """Name -> unfitted estimator: the user's as given, the built-ins on ``backbone``."""
    params = dict(estimator_params or {})
    if "backbone" in params:
        raise ValueError("estimator_params must not set 'backbone': pass it as "
                         "compare_transfer's backbone argument")
    if random_state is not None:
        params.setdefault("random_state", random_state)
    if task == "regression" and "contrastive" in chosen and chosen["contrastive"] is None:
        raise ValueError("the 'contrastive' method draws pairs from class labels; it compares "
                         "classifiers only, and y here is continuous")
    base = _TASKS[task](backbone=backbone).set_params(**params)
    # cross_validate clones every estimator: the user's own stay unfitted. A
    # plain loop, not a comprehension, so _builtin's warning points at the caller.
    estimators = {}
    for name, est in chosen.items():
        estimators[name] = est if est is not None else _builtin(name, base, params)
    return estimators


def _builtin(name, base, user_params):
    """The built-in method ``name``: ``base`` with the method's own settings."""
    settings = {
        "scratch": {"weights": None},
        "linear_probe": {"freeze": "backbone"},
        "fine_tune": {},
        # Head first for a quarter of the epochs, so a random head does not
        # wreck the pretrained features, then everything (at the head-first
        # default rate unless estimator_params sets lr).
        "lp_ft": {"freeze": "none", "freeze_epochs": max(1, base._max_epochs() // 4)},
        "contrastive": {"objective": "contrastive"},
        # Weight decay pulls towards zero, against L2-SP's pull towards the source.
        "l2sp": {"l2sp": L2SP_ALPHA, "weight_decay": 0.0},
        # The adaptation methods: wrapped with the source by compare_transfer.
        **{method: {} for method in ADAPTATION_METHODS},
    }[name]
    overridden = {key: user_params[key] for key in settings
                  if key in user_params and user_params[key] != settings[key]}
    if overridden:
        warnings.warn(f"the {name!r} method sets {settings}, overriding estimator_params "
                      f"{overridden}; pass your own estimator in methods to change them",
                      UserWarning, stacklevel=4)  # the caller of compare_transfer
    return clone(base).set_params(**settings)


def _materialize_splits(cv, X, y, task):
    """The (train, test) index pairs of ``cv``, drawn once for every method."""
    splitter = check_cv(cv, y, classifier=task == "classification")
    splits = list(splitter.split(X, y))
    if len(splits) < 2:
        raise ValueError(f"compare_transfer needs at least 2 cross-validation splits to "
                         f"measure how much the gains vary; cv gave {len(splits)}")
    return splits
