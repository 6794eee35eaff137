"""A Hugging Face model folder never runs the Python code it ships.

Each folder names a module of its own (``auto_map``) that would write a
sentinel file when imported; the user is even ready to answer "yes" if
transformers asked whether to run it. sktransfer passes
``trust_remote_code=False`` to every loader: the folder is refused, or
loaded with transformers' own classes, and nothing is asked or run.
"""

import builtins
import json
import os
import shutil

import numpy as np
import pytest

from sktransfer import PretrainedFeatureTransformer

pytest.importorskip("transformers")

TEXTS = ["the cat sat on the mat", "a dog ran far"]


def plant(folder, sentinel, files):
    """Write ``evil.py`` (it creates ``sentinel`` when imported) and point ``files``'s
    ``auto_map`` entries at it; ``files``: {json file: {auto class: class name}}."""
    with open(os.path.join(folder, "evil.py"), "w") as fh:
        fh.write(f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n")
    for name, auto_map in files.items():
        path = os.path.join(folder, name)
        config = {}
        if os.path.exists(path):
            with open(path) as fh:
                config = json.load(fh)
        config["auto_map"] = {auto: (f"evil.{cls}" if auto != "AutoTokenizer"
                                     else [f"evil.{cls}", f"evil.{cls}"])
                              for auto, cls in auto_map.items()}
        with open(path, "w") as fh:
            json.dump(config, fh)


@pytest.fixture
def asked(monkeypatch):
    """Answers "y" to any question transformers asks on the terminal, and records it."""
    questions = []

    def answer(prompt=""):
        questions.append(prompt)
        return "y"
    monkeypatch.setattr(builtins, "input", answer)
    return questions


def test_a_folder_of_an_unknown_model_that_needs_its_code_is_refused(tmp_path, asked):
    folder, sentinel = tmp_path / "model", tmp_path / "ran.txt"
    folder.mkdir()
    with open(folder / "config.json", "w") as fh:
        json.dump({"model_type": "sktransfer-evil"}, fh)
    plant(str(folder), sentinel, {"config.json": {"AutoConfig": "EvilConfig",
                                                  "AutoModel": "EvilModel"}})
    with pytest.raises(ValueError, match="custom code"):
        PretrainedFeatureTransformer(f"hf:{folder}", device="cpu").fit(TEXTS)
    assert not sentinel.exists() and asked == []


@pytest.mark.parametrize("weights", ["DEFAULT", None])
def test_a_known_model_is_loaded_with_transformers_classes_not_the_folders(
        tiny_bert_path, tmp_path, asked, weights):
    folder, sentinel = tmp_path / "model", tmp_path / "ran.txt"
    shutil.copytree(tiny_bert_path, folder)
    plant(str(folder), sentinel, {
        "config.json": {"AutoConfig": "EvilConfig", "AutoModel": "EvilModel"},
        "tokenizer_config.json": {"AutoTokenizer": "EvilTokenizer"}})
    planted = PretrainedFeatureTransformer(f"hf:{folder}", weights=weights, device="cpu",
                                           random_state=0).fit(TEXTS)
    clean = PretrainedFeatureTransformer(f"hf:{tiny_bert_path}", weights=weights, device="cpu",
                                         random_state=0).fit(TEXTS)
    np.testing.assert_allclose(planted.transform(TEXTS), clean.transform(TEXTS), atol=1e-6)
    assert not sentinel.exists() and asked == []
