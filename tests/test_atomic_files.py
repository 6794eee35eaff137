"""Files sktransfer writes (saved models, exported graphs, cache entries) are
created as ``open`` creates them: readable by whom the user's umask says."""

import os
import stat

import pytest

from sktransfer._utils.files import write_atomically


@pytest.fixture
def umask():
    """Set the process's umask for one test, then put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_has_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)

    def write(temporary):
        with open(temporary, "w") as fh:
            fh.write("done")

    write_atomically(tmp_path / "a.txt", write)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == mode
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(temporary):
        with open(temporary, "w") as fh:
            fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(tmp_path / "a.txt", fail)
    assert os.listdir(tmp_path) == []
