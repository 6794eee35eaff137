"""Old paths: code aliases warn once, naming the new path; saved names never warn.

Files written by 0.1.0 name ``sktransfer.backbones.state.PickledModule`` and
``sktransfer.regularizers.L2SP`` (see ``sktransfer._utils.aliases``): the
user cannot rewrite what they saved, so loading them warns nothing, ever.
Code aliases (``MOVED``) work until ``REMOVED_IN`` and warn on import. Each
check that needs a first import runs in a fresh interpreter (a module warns
once, when first imported), all the paths in one, to keep the suite short.
"""

import json
import os
import subprocess
import sys
import warnings

import pytest

from sktransfer._utils.aliases import MOVED, REMOVED_IN, SAVED_NAMES

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy")

# In a fresh interpreter, with every FutureWarning an error: the pickle imports
# sktransfer.backbones.state and sktransfer.regularizers itself.
_LOAD = """
import sys, warnings
warnings.simplefilter("error", FutureWarning)
warnings.simplefilter("error", DeprecationWarning)
import joblib, sktransfer
joblib.load(sys.argv[1])
sktransfer.load(sys.argv[2])
print("loaded")
"""


def test_files_naming_old_paths_load_without_a_warning():
    # classifier_module names both saved names: PickledModule and regularizers.L2SP.
    pkl = os.path.join(LEGACY, "classifier_module.pkl")
    assert b"sktransfer.backbones.state" in open(pkl, "rb").read()
    assert b"sktransfer.regularizers" in open(pkl, "rb").read()
    out = subprocess.run([sys.executable, "-c", _LOAD, pkl,
                          os.path.join(LEGACY, "classifier_module.skt")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("loaded")


@pytest.mark.parametrize("module, name", [(m, n) for m, names in SAVED_NAMES.items()
                                          for n in names])
def test_saved_names_are_served_silently(module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj = getattr(__import__(module, fromlist=[name]), name)
    assert isinstance(obj, type)


def test_the_other_names_of_backbones_state_warn_and_are_the_same_objects():
    import sktransfer.backbones.state as state
    from sktransfer.persistence import trust

    with pytest.warns(FutureWarning) as caught:
        old = state.UntrustedTypeError
    message = str(caught[0].message)
    assert "sktransfer.persistence.trust" in message and REMOVED_IN in message
    assert old is trust.UntrustedTypeError
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        state.nothing


# Each module alias imported once, its warnings recorded; then the new module,
# to compare what the alias re-exports.
_ALIASES = """
import importlib, json, sys, warnings
out = {}
with warnings.catch_warnings():
    warnings.simplefilter("error")  # importing sktransfer itself warns nothing
    import sktransfer, sktransfer.inputs, sktransfer.saving, sktransfer.study
    for name in ("sktransfer.saving.format", "sktransfer.saving.reader",
                 "sktransfer.saving.writer", "sktransfer.inputs.audio",
                 "sktransfer.study.adaptation", "sktransfer.persistence.codec",
                 "sktransfer.persistence.modules", "sktransfer.persistence.trust",
                 "sktransfer.persistence.checks"):
        importlib.import_module(name)
for old in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"import {old} as alias")
    new = importlib.import_module(json.loads(sys.argv[2])[old])
    out[old] = {"messages": [str(w.message) for w in caught
                             if issubclass(w.category, FutureWarning)],
                "filenames": [w.filename for w in caught
                              if issubclass(w.category, FutureWarning)],
                "names": sorted(alias.__all__),
                "same": all(getattr(alias, n) is getattr(new, n) for n in alias.__all__)}
print(json.dumps(out))
"""

MODULE_ALIASES = sorted(m for m in MOVED if m != "sktransfer.backbones.state")


@pytest.fixture(scope="module")
def imported_aliases():
    out = subprocess.run([sys.executable, "-c", _ALIASES, json.dumps(MODULE_ALIASES),
                          json.dumps(MOVED)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("old", MODULE_ALIASES)
def test_each_code_alias_warns_once_naming_the_new_path_and_re_exports_it(old,
                                                                          imported_aliases):
    result = imported_aliases[old]
    assert len(result["messages"]) == 1, result["messages"]
    message = result["messages"][0]
    assert f"{old} moved to {MOVED[old]}" in message
    assert REMOVED_IN in message
    assert result["filenames"] == ["<string>"]  # points at the import, not at the alias
    assert result["names"] and result["same"]


def test_the_old_paths_serve_what_they_served():
    assert set(MODULE_ALIASES) == {
        "sktransfer.audio_inputs", "sktransfer.study_adaptation",
        "sktransfer.persistence.format", "sktransfer.persistence.reader",
        "sktransfer.persistence.writer"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sktransfer.audio_inputs as audio
        import sktransfer.persistence.reader as reader
        import sktransfer.persistence.writer as writer

    import sktransfer

    assert {"AUDIO_SUFFIXES", "AudioSamples", "MAX_CHANNELS", "RESAMPLING", "audio_samples",
            "mono_float", "resample", "samples_first"} <= set(audio.__all__)
    assert reader.load is sktransfer.load and writer.save is sktransfer.save
