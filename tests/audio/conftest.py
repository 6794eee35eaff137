"""What the audio tests share: the tiny Hugging Face speech models, built once per session."""

import pytest

from .tiny import build


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """``models(kind)``: the directory of a tiny model of ``kind`` (see ``tiny.build``)."""
    root = tmp_path_factory.mktemp("audio-models")
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = build(kind, root / kind)
        return built[kind]
    return get
