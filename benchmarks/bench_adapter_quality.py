"""Adapters: does ``adapter="lora"`` with its defaults learn as well as full fine-tuning?

The quality targets of issue 30, each on the same random draws for every
method (draw ``s`` picks k labelled samples per class with seed ``s`` and
tests on all the other samples; every fit is seeded ``random_state=s``):

- ``text``: the few-shot text benchmark of ``bench_fewshot.py`` (praise or
  complaint about 96 different everyday things, tests/test_contrastive.py),
  the real all-MiniLM-L6-v2, 8 labels per class. Methods, all at the
  estimator's defaults (``lr=None``, ``max_epochs=None``): frozen
  embeddings + LogisticRegression; full fine-tuning; ``adapter="lora"``;
  ``objective="contrastive"``; ``objective="contrastive", adapter="lora"``.
  Targets: LoRA >= full fine-tuning - 1 point and >= frozen + LR;
  contrastive + LoRA >= contrastive - 1 point.
- ``digits``: a transfer to new classes. A small timm ViT (ViT-Ti layout,
  ``img_size=8``, 2 px patches, one channel, width 64, 4 blocks, 4 heads) is
  trained here from random weights on sklearn's digits 0-4 (all of them);
  the target task is digits 5-9 with 20 labels per class, and the fitted
  source estimator is the backbone (``backbone=source``) of full fine-tuning
  and of ``adapter="lora"`` (defaults), with frozen source features +
  LogisticRegression for reference. Target: LoRA >= full fine-tuning - 1
  point.

Each target is judged on the mean of the per-draw paired differences.
Where LoRA misses one at the default rate (``--grid missed``; ``always``
runs it regardless), the LoRA setting is refitted at each rate of
``--lrs`` on *other* draws (seeds 100, 101, ...), beside its comparator at
its defaults on those draws, to show which default would meet the target.

Run from the repository root (``--part`` splits the work, e.g. over two
processes; ``--quick``: 1 draw, a shorter source training, no grid)::

    .venv/bin/python benchmarks/bench_adapter_quality.py [--quick] [--draws 5]
        [--part text digits grid] [--grid missed|always|never] [--threads N]
        [--lrs 3e-4 1e-3 3e-3 1e-2] [--grid-seed 100] [--grid-draws 3]
        [--grid-only TASK:METHOD ...]

or through ``benchmarks/run.py --only adapter_quality``. Results and the
commands that gave them: benchmarks/RESULTS.md, "Adapter quality".
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sklearn.linear_model import LogisticRegression  # noqa: E402

from bench_fewshot import draw, minilm_spec, text_set  # noqa: E402
from harness import Settings, Table, cpu_line  # noqa: E402

NAME = "adapter_quality"
FROZEN = "frozen + LR"

#: The methods of each task: None is frozen features + LogisticRegression,
#: a dict the parameters of a FineTunedClassifier left otherwise at its defaults.
TEXT_METHODS = {
    FROZEN: None,
    "full fine-tuning": {},
    "LoRA": {"adapter": "lora"},
    "contrastive": {"objective": "contrastive"},
    "contrastive + LoRA": {"objective": "contrastive", "adapter": "lora"},
}
DIGITS_METHODS = {
    FROZEN: None,
    "full fine-tuning": {},
    "LoRA": {"adapter": "lora"},
}

#: (task, method, comparator, margin): met when mean(method - comparator) >= margin.
TARGETS = (
    ("text", "LoRA", "full fine-tuning", -0.01),
    ("text", "LoRA", FROZEN, 0.0),
    ("text", "contrastive + LoRA", "contrastive", -0.01),
    ("digits", "LoRA", "full fine-tuning", -0.01),
)

TEXT_SHOTS = 8
DIGITS_SHOTS = 20
SOURCE_CLASSES = (0, 1, 2, 3, 4)
GRID_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
GRID_SEED = 100  # the grid's draws: seeds 100, 101, ... (the reported ones are 0, 1, ...)


# -- the tasks: (backbone, frozen features, as_input, X, y) ---------------------------

def text_task():
    from sktransfer import PretrainedFeatureTransformer

    spec = minilm_spec()
    X, y = text_set()
    Z = PretrainedFeatureTransformer(spec).fit(list(X)).transform(list(X))
    return dict(backbone=spec, Z=Z, as_input=list, X=X, y=y, shots=TEXT_SHOTS,
                methods=TEXT_METHODS, note="all-MiniLM-L6-v2, praise vs complaint, "
                                           f"{TEXT_SHOTS} labels per class")


def small_vit():
    """ViT-Ti's layout at 8x8 px: 2 px patches (16 tokens), width 64, 4 blocks, 4 heads."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8,
                             patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4,
                             num_classes=0)


def digits_task(epochs=30):
    """The source ViT fitted on digits 0-4; digits 5-9 as the target task."""
    from sklearn.datasets import load_digits

    from sktransfer import FineTunedClassifier

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    source = np.isin(data.target, SOURCE_CLASSES)
    start = time.perf_counter()
    fitted = FineTunedClassifier(small_vit(), lr=1e-3, max_epochs=epochs, batch_size=64,
                                 random_state=0).fit(X[source], data.target[source])
    X, y = X[~source], data.target[~source]
    note = (f"small timm ViT trained on digits 0-4 ({source.sum()} images, {epochs} epochs, "
            f"{time.perf_counter() - start:.0f} s; its own head: train loss "
            f"{fitted.history_[-1]['train_loss']:.3f}) -> digits 5-9, {DIGITS_SHOTS} labels "
            "per class")
    print(note, file=sys.stderr, flush=True)
    return dict(backbone=fitted, Z=fitted.transform(X), as_input=np.asarray, X=X, y=y,
                shots=DIGITS_SHOTS, methods=DIGITS_METHODS, note=note)


def score(task, params, seed):
    """Test accuracy of one method on draw ``seed``."""
    from sktransfer import FineTunedClassifier

    X, y, Z, as_input = task["X"], task["y"], task["Z"], task["as_input"]
    train, test = draw(y, task["shots"], seed)
    if params is None:
        return LogisticRegression(max_iter=1000).fit(Z[train], y[train]).score(Z[test], y[test])
    clf = FineTunedClassifier(task["backbone"], random_state=seed, **params)
    return clf.fit(as_input(X[train]), y[train]).score(as_input(X[test]), y[test])


def evaluate(task, methods, seeds, label):
    """{method: accuracies over ``seeds``}, printing progress."""
    scores = {}
    for name, params in methods.items():
        scores[name] = []
        for seed in seeds:
            start = time.perf_counter()
            scores[name].append(score(task, params, seed))
            print(f"  {label} {name} draw {seed}: {scores[name][-1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        scores[name] = np.asarray(scores[name])
    return scores


def fmt(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def signed(values):
    return ", ".join(f"{v:+.3f}" for v in values)


def accuracy_table(task_name, task, scores, seeds):
    rows = [[name, fmt(s), ", ".join(f"{v:.3f}" for v in s)] for name, s in scores.items()]
    return Table(f"Adapter quality, {task_name}: test accuracy over {len(seeds)} draws "
                 f"(seeds {seeds[0]}-{seeds[-1]})",
                 ["method", "mean ± std", "per draw"], rows,
                 [f"{task['note']}; every fine-tuner at its defaults (lr=None, "
                  "max_epochs=None). Std is over draws (ddof 0)."])


def target_rows(task_name, scores):
    rows, missed = [], []
    for task, method, against, margin in TARGETS:
        if task != task_name or method not in scores or against not in scores:
            continue
        diff = scores[method] - scores[against]
        met = diff.mean() >= margin
        rows.append([task, f"{method} >= {against} {margin * 100:+.0f} pt".replace(
            " +0 pt", ""), f"{diff.mean():+.3f}", signed(diff),
            f"{np.sum(diff > 0)}/{np.sum(diff < 0)}", "met" if met else "not met"])
        if not met:
            missed.append((task, method, against, margin))
    return rows, missed


def targets_table(rows):
    return Table("Adapter quality: the targets (mean of the per-draw paired differences)",
                 ["task", "target", "mean difference", "per draw", "draws won/lost",
                  "verdict"], rows, [f"Measured on: {cpu_line()}."])


def grid_table(tasks, groups, lrs, seeds):
    """Each LoRA setting at each rate, on other draws, beside its comparators at their defaults.

    ``groups`` maps (task, method) to its targets [(task, method, comparator, margin)].
    """
    rows = []
    for (task_name, method), targets in groups.items():
        task = tasks[task_name]
        base = evaluate(task, {t[2]: task["methods"][t[2]] for t in targets}, seeds,
                        f"grid {task_name}")
        for against, acc in base.items():
            rows.append([task_name, f"{against} (defaults)", "-", fmt(acc), "", ""])
        for lr in lrs:
            params = {**task["methods"][method], "lr": lr}
            acc = evaluate(task, {method: params}, seeds, f"grid {task_name} lr={lr:g}")[method]
            diffs, verdicts = [], []
            for _, _, against, margin in targets:
                diff = acc - base[against]
                diffs.append(f"vs {against}: {diff.mean():+.3f} ({signed(diff)})")
                verdicts.append("met" if diff.mean() >= margin else "not met")
            rows.append([task_name, method, f"{lr:g}", fmt(acc), "; ".join(diffs),
                         ", ".join(verdicts)])
    return Table(f"Adapter quality: learning-rate grid on other draws (seeds {seeds[0]}-"
                 f"{seeds[-1]})",
                 ["task", "method", "lr", "mean ± std", "difference to the comparator "
                  "(per draw)", "target"], rows,
                 ["Each LoRA setting at each rate, its comparators at their defaults, on "
                  "draws not used for the reported table; the same targets as above."])


def run(settings, parts=("text", "digits", "grid"), draws=None, grid="missed", lrs=GRID_LRS,
        grid_draws=3, grid_seed=GRID_SEED, grid_only=None):
    quick = settings.quick
    draws = draws or (1 if quick else 5)
    seeds = list(range(draws))
    grid = "never" if quick else grid
    print(cpu_line(), file=sys.stderr, flush=True)
    tasks, tables, rows, missed = {}, [], [], []
    alone = "grid" in parts and grid == "always"  # the grid without the main tables
    wanted = {t for t, _ in (grid_only or [])}
    if "text" in parts or (alone and (not wanted or "text" in wanted)):
        tasks["text"] = text_task()
    if "digits" in parts or (alone and (not wanted or "digits" in wanted)):
        tasks["digits"] = digits_task(epochs=10 if quick else 30)
    for name in ("text", "digits"):
        if name in parts:
            scores = evaluate(tasks[name], tasks[name]["methods"], seeds, name)
            tables.append(accuracy_table(name, tasks[name], scores, seeds))
            task_rows, task_missed = target_rows(name, scores)
            rows += task_rows
            missed += task_missed
    if rows:
        tables.append(targets_table(rows))
    if "grid" in parts and grid != "never":
        # every target of a LoRA setting that missed one (or of every setting)
        settings_ = {(t[0], t[1]) for t in (TARGETS if grid == "always" else missed)}
        groups = {}
        for t in TARGETS:
            if (t[0], t[1]) in settings_ and t[0] in tasks \
                    and (not grid_only or (t[0], t[1]) in grid_only):
                groups.setdefault((t[0], t[1]), []).append(t)
        if groups:
            tables.append(grid_table(tasks, groups, lrs,
                                     list(range(grid_seed, grid_seed + grid_draws))))
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 draw, 10 source epochs, no grid: checks that it runs")
    parser.add_argument("--draws", type=int, help="draws per task (default 5; quick 1)")
    parser.add_argument("--part", nargs="+", choices=("text", "digits", "grid"),
                        default=["text", "digits", "grid"])
    parser.add_argument("--grid", choices=("missed", "always", "never"), default="missed",
                        help="the learning-rate grid: for the targets LoRA missed, for every "
                             "target, or none")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(GRID_LRS))
    parser.add_argument("--grid-draws", type=int, default=3)
    parser.add_argument("--grid-seed", type=int, default=GRID_SEED,
                        help="the grid's first draw (default 100; the reported ones: 0, 1, ...)")
    parser.add_argument("--grid-only", nargs="+", metavar="TASK:METHOD",
                        help="grid only these settings, e.g. 'text:LoRA' 'digits:LoRA'")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    settings = Settings(device="cpu", quick=args.quick, threads=args.threads)
    print(f"- {cpu_line()}")
    for table in run(settings, parts=args.part, draws=args.draws, grid=args.grid,
                     lrs=args.lrs, grid_draws=args.grid_draws, grid_seed=args.grid_seed,
                     grid_only=[tuple(x.split(":", 1)) for x in args.grid_only or []]):
        print("\n" + table.to_markdown(), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
