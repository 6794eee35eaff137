"""Files written so that a crash or a full disk never leaves half of one, and folder I/O."""

import contextlib
import os
import secrets
import tempfile


def write_atomically(path, write, *, temporary=None, make_folder=True):
    """Write ``path`` through a temporary file beside it, then rename it into place.

    ``write(temporary_path)`` writes the content. Its bytes reach the disk
    (fsync) before the rename, so the name never points at a file a crash
    could leave short; ``os.replace`` is atomic on local file systems and on
    NFS. On any failure (a full disk, an interrupt) the temporary file is
    removed and the exception propagates: nothing is left behind.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder is created if missing.
    write : callable
        Called with the temporary file's path; writes the whole content there.
    temporary : str, optional
        The temporary file's path, which must not exist (created exclusively).
        By default a fresh name beside ``path``. The file is created as
        ``open`` creates one: mode 0o666 less the process's umask.
    make_folder : bool, default=True
        Create ``path``'s folder when missing; False raises
        ``FileNotFoundError`` instead (a mistyped destination is the caller's).

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
    >>> def write(tmp):
    ...     with open(tmp, "w") as fh:
    ...         fh.write("done")
    >>> write_atomically(path, write)
    >>> open(path).read()
    'done'
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if make_folder:
        os.makedirs(folder, exist_ok=True)
    # Created as open() creates files (0o666 less the umask), not mkstemp's 0o600:
    # the renamed file is the user's, readable by whom their umask says.
    while True:
        name = temporary or os.path.join(folder, f".sktransfer-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            if temporary is not None:
                raise
    temporary = name
    os.close(fd)
    try:
        write(temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def read_folder(path):
    """Every file under ``path`` as ``{relative path: str (UTF-8 text) or bytes}``."""
    files = {}
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            with open(full, "rb") as fh:
                data = fh.read()
            try:
                files[rel] = data.decode("utf-8")
            except UnicodeDecodeError:
                files[rel] = data
    return files


def write_folder(files, path):
    """Write :func:`read_folder` output under ``path`` (refusing paths that leave it)."""
    root = os.path.realpath(path)
    for rel, data in files.items():
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, full]) != root:
            raise ValueError(f"refusing to write {rel!r} outside {path!r}")
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))


def temporary_folder():
    """A temporary directory context (files written for a loader, then removed)."""
    return tempfile.TemporaryDirectory(prefix="sktransfer-")
