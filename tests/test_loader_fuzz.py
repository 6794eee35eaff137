"""A crafted model file is refused before anything is built, and runs nothing.

Real saved files (each estimator; module, torchvision, timm and Hugging Face
backbones; files written by an earlier release too) are mutated the way an
attacker who read our source would: every class name replaced by names that
reach other objects through a trusted module, every module's attribute keys
and member names by keys that would change what its code does, every dtype
tag by a non-dtype. Each mutant must be refused with an
``UntrustedTypeError`` (or its subclass) naming what was refused, leave a
sentinel file in place, and import no module the clean file does not.
"""

import gc
import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer
from sktransfer.persistence.trust import UntrustedTypeError

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy")
MANIFEST = "sktransfer.manifest"

#: Names that pass a check by spelling (a trusted prefix) and reach another
#: object, or are plainly untrusted.
DANGEROUS_NAMES = [
    "sktransfer._utils.files.tempfile._TemporaryFileCloser",
    "torch.nn.modules.module.weakref.finalize",
    "torch.nn.modules.module.torch.load",
    "torch.nn.functional.torch.save",
    "torch.nn.modules.module.Module.__init__",
    "torch.nn.modules.module.Module.__class__",
    "torch.nn.modules.linear.Linear.forward",
    "torch.nn.Linear",  # a re-export: not the class's own name
    "sktransfer.__builtins__.eval",
    "sktransfer.persistence.trust.importlib.import_module",
    "sktransfer.scaling.shipping.pickle.loads",
    "sktransfer.training.run.os.system",
    "torch.nn.modules.module._global_forward_hooks",
    "torch.nn.modules.linear.Linear; import os",
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "evil_payload.Payload",
]

#: Attribute keys and member names a file must never set.
DANGEROUS_KEYS = [
    "__class__", "__dict__", "__init__", "__setstate__", "__reduce_ex__", "__getattr__",
    "forward", "extra_repr", "state_dict", "_call_impl", "_apply", "_load_from_state_dict",
    "register_forward_hook", "_parameters", "_buffers", "_modules", "_forward_hooks",
    "_forward_pre_hooks", "_state_dict_hooks", "_backward_hooks", "training",
]

#: Fitted-attribute keys an estimator must never get from a file.
DANGEROUS_ESTIMATOR_KEYS = ["__class__", "__dict__", "predict", "transform", "fit",
                            "get_params", "__sklearn_tags__"]

#: Dtype tags that are not dtypes (torch.load is a top-level torch object).
NOT_DTYPES = ["load", "save", "_dynamo", "Tensor", "FloatTensor", "nn", "float32 ", 123, None]


def read_file(path):
    """The safetensors header (with the manifest parsed) and the raw tensor bytes."""
    with open(path, "rb") as fh:
        raw = fh.read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    return header, json.loads(header["__metadata__"][MANIFEST]), raw[8 + length:]


def write_file(path, header, manifest, data):
    """The same tensors under an edited manifest (checksums cover tensors only)."""
    header = dict(header, __metadata__=dict(header["__metadata__"],
                                            **{MANIFEST: json.dumps(manifest)}))
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded + data)


def locations(node, path=()):
    """Paths (key tuples) to every node of interest in a manifest."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from locations(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from locations(value, path + (i,))


def at(manifest, path):
    for key in path:
        manifest = manifest[key]
    return manifest


def class_mutations(manifest):
    for path, node in list(locations(manifest)):
        if "class" in node and "children" in node:
            for name in DANGEROUS_NAMES:
                yield name, lambda m, p=path, n=name: at(m, p).update({"class": n})
        if set(node) == {"__class__"}:
            for name in DANGEROUS_NAMES:
                yield name, lambda m, p=path, n=name: at(m, p).update({"__class__": n})
    for i, _ in enumerate(manifest["estimators"]):
        for name in DANGEROUS_NAMES[:4]:
            yield name, lambda m, i=i, n=name: m["estimators"][i].update({"class": n})


def key_mutations(manifest):
    for path, node in list(locations(manifest)):
        if "class" in node and "children" in node:
            for key in DANGEROUS_KEYS:
                # A plain value: the key itself is what must be refused.
                yield key, lambda m, p=path, k=key: at(m, p)["attrs"].update({k: 0})
            for key in DANGEROUS_KEYS[:8] + ["a.b", ""]:
                yield key, lambda m, p=path, k=key: at(m, p)["children"].update({k: None})
            if node["parameters"] or node["buffers"]:
                part = "parameters" if node["parameters"] else "buffers"
                for key in ("forward", "__dict__", "_modules"):
                    yield key, lambda m, p=path, k=key, part=part: (
                        at(m, p)[part][0].update({"name": k}))
    for i, entry in enumerate(manifest["estimators"]):
        if entry.get("fitted"):
            for key in DANGEROUS_ESTIMATOR_KEYS:
                yield key, lambda m, i=i, k=key: m["estimators"][i]["attributes"].update({k: 1})


def tag_mutations(manifest):
    for path, node in list(locations(manifest)):
        if set(node) == {"__dtype__"}:
            for bad in NOT_DTYPES:
                yield bad, lambda m, p=path, b=bad: at(m, p).update({"__dtype__": b})
        if "name" in node and "dtype" in node and ("requires_grad" in node or "persistent" in node):
            for bad in NOT_DTYPES[:3]:
                yield bad, lambda m, p=path, b=bad: at(m, p).update({"dtype": b})
        if node.get("kind") == "spec":
            for bad in NOT_DTYPES[:3]:
                yield bad, lambda m, p=path, b=bad: at(m, p).update(
                    {"dtypes": {"missing.weight": b}})
    for i, entry in enumerate(manifest["estimators"]):
        for bad in ("O", "|O", "V8", "object"):
            yield bad, lambda m, i=i, b=bad: m["estimators"][i]["params"].update(
                {"random_state": {"__scalar__": [b, 1]}})


class TaggedNet(nn.Module):
    """Only torch.nn classes inside, with attributes of every tagged kind."""


def tagged_classifier():
    rng = np.random.RandomState(0)
    X = rng.rand(24, 4).astype(np.float32)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    net.compute_dtype = torch.float16  # a __dtype__ tag
    net.activation_class = nn.GELU  # a __class__ tag
    net.shape = (4, 6)  # a __tuple__ tag
    return FineTunedClassifier(net, max_epochs=1, l2sp=0.01, random_state=0).fit(
        X, np.arange(24) % 3)


def torchvision_transformer():
    images = (np.random.RandomState(0).rand(4, 32, 32, 3) * 255).astype(np.uint8)
    return PretrainedFeatureTransformer("torchvision:mobilenet_v3_small", weights=None,
                                        image_size=32).fit(images)


def lora_classifier_module():
    rng = np.random.RandomState(0)
    X = rng.rand(24, 4).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6))
    adapter = pytest.importorskip("peft").LoraConfig(r=2, target_modules=["0", "2"])
    return FineTunedClassifier(net, adapter=adapter, max_epochs=1, random_state=0).fit(
        X, np.arange(24) % 2)


def lora_classifier_hf(path):
    texts = ["the cat sat", "a dog ran", "the big dog", "a small cat"] * 3
    return FineTunedClassifier("hf:" + path, adapter="lora", max_epochs=1, batch_size=4,
                               random_state=0).fit(texts, np.arange(12) % 2)


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory, tiny_bert_path):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("fuzz_sources")
    files = {}
    for name in ("transformer_module", "classifier_module", "regressor_module",
                 "transformer_timm", "classifier_timm_groups", "transformer_hf"):
        files[name] = os.path.join(folder, name + ".skt")
        shutil.copy(os.path.join(LEGACY, name + ".skt"), files[name])
    for name, make in (("classifier_tagged", tagged_classifier),
                       ("transformer_torchvision", torchvision_transformer),
                       # the base by reference (spec, weights, digest), the adapter stored
                       ("classifier_lora_hf", lambda: lora_classifier_hf(tiny_bert_path))):
        files[name] = os.path.join(folder, name + ".skt")
        sktransfer.save(make(), files[name])
    for path in files.values():  # the clean files load: what they import is allowed
        sktransfer.load(path)
    return files


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A file that must survive, and a module whose import or call would delete it."""
    marker = tmp_path / "sentinel"
    marker.write_text("keep me")
    (tmp_path / "evil_payload.py").write_text(
        f"import os\nos.remove({str(marker)!r})\nclass Payload:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_payload", None)


def refused(source, mutations, tmp_path, sentinel):
    header, manifest, data = read_file(source)
    target = str(tmp_path / "mutant.skt")
    count = 0
    for spelled, mutate in mutations(manifest):
        mutant = json.loads(json.dumps(manifest))
        mutate(mutant)
        write_file(target, header, mutant, data)
        before = set(sys.modules)
        with pytest.raises(UntrustedTypeError) as info:
            sktransfer.load(target)
        where = f"{os.path.basename(source)} with {spelled!r}"
        assert str(spelled) in str(info.value), where
        assert sentinel.exists(), where
        assert set(sys.modules) == before, f"{where} imported {set(sys.modules) - before}"
        count += 1
    # Once per file (a collection per mutant would take most of the time):
    # a planted object that acts when collected has had its chance.
    del info
    gc.collect()
    assert sentinel.read_text() == "keep me", os.path.basename(source)
    return count


@pytest.mark.parametrize("mutations", [class_mutations, key_mutations, tag_mutations])
def test_every_mutation_of_a_real_file_is_refused_before_anything_runs(
        saved_files, mutations, tmp_path, sentinel):
    start = time.perf_counter()
    count = sum(refused(path, mutations, tmp_path, sentinel) for path in saved_files.values())
    assert count > 100  # the mutations reached every file's names, keys and tags
    assert time.perf_counter() - start < 60


#: Adapter fields that would import, read files, run a data-driven
#: initialization, make more than an adapter, or cost unbounded time or memory.
BAD_ADAPTER_FIELDS = [
    ("megatron_core", "evil_payload"), ("loftq_config", {"loftq_bits": 4}),
    ("init_lora_weights", "loftq"), ("init_lora_weights", "pissa"),
    ("modules_to_save", ["0"]), ("runtime_config", {}), ("__class__", 1),
    ("target_modules", "(a+)+$"), ("target_modules", ["0|2"]), ("rank_pattern", {"(a+)+b": 2}),
    ("r", 10 ** 9), ("r", [8]), ("layer_replication", [[0, 1]]),
]


def adapter_mutations(manifest):
    for path, node in list(locations(manifest)):
        if set(node) == {"peft_type", "fields"}:
            for name in DANGEROUS_NAMES[:4] + ["LORA; import os", "PROMPT_TUNING"]:
                yield name, lambda m, p=path, n=name: at(m, p).update({"peft_type": n})
            for field, value in BAD_ADAPTER_FIELDS:
                yield field, lambda m, p=path, f=field, v=value: at(m, p)["fields"].update({f: v})
        if isinstance(node.get("origin"), dict):
            for field, value, named in (
                    ("spec", "hf:/etc", "/etc"), ("spec", "timm:evil_payload", "evil_payload"),
                    ("weights", "/etc/passwd", "/etc/passwd"), ("digest", "0" * 32, "digest"),
                    ("image_size", 10 ** 9, "image_size"), ("pooling", "evil", "evil"),
                    ("__class__", "os.system", "malformed")):
                yield named, lambda m, p=path, f=field, v=value: at(m, p)["origin"].update({f: v})


def test_every_mutation_of_an_adapter_or_base_reference_is_refused(
        saved_files, tmp_path, sentinel):
    # An adapter in a Hugging Face backbone stored by reference, and in a
    # module stored whole (its peft config also a parameter of the estimator).
    module_file = str(tmp_path / "lora_module.skt")
    sktransfer.save(lora_classifier_module(), module_file)
    target = str(tmp_path / "mutant.skt")
    count = 0
    for source in (saved_files["classifier_lora_hf"], module_file):
        header, manifest, data = read_file(source)
        for spelled, mutate in adapter_mutations(manifest):
            mutant = json.loads(json.dumps(manifest))
            mutate(mutant)
            write_file(target, header, mutant, data)
            before = set(sys.modules)
            with pytest.raises((ValueError, TypeError)) as info:
                sktransfer.load(target)
            where = f"{spelled!r} in {os.path.basename(source)}"
            assert str(spelled) in str(info.value), f"{where}: {info.value}"
            assert sentinel.exists(), where
            assert not {m for m in set(sys.modules) - before if "evil" in m}, where
            count += 1
    assert count > 60


def test_the_tagged_file_round_trips_its_tags(saved_files):
    # The mutations of the tag kinds above start from a file that has them.
    loaded = sktransfer.load(saved_files["classifier_tagged"])
    net = loaded.backbone_.module
    assert net.compute_dtype is torch.float16 and net.activation_class is nn.GELU
    assert net.shape == (4, 6)


def test_a_module_that_load_would_refuse_is_refused_when_saved(tmp_path):
    # An instance attribute shadowing a method is data a file never sets: the
    # user hears it from save, not from a colleague's load.
    net = nn.Sequential(nn.Linear(4, 2))
    net.extra_repr = "shadowed"
    est = PretrainedFeatureTransformer(net).fit(np.ones((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"'extra_repr'.*joblib"):
        sktransfer.save(est, tmp_path / "m.skt")
    assert not (tmp_path / "m.skt").exists()
