"""The cache directory's files, opened and removed as data from a shared directory.

A feature cache directory may be shared with other users, so a name in it
may be anything: a FIFO or a device (reading one would block, or never
end), or a symbolic link to a file or directory elsewhere (deleting through
it would delete another file). These helpers open a chunk only when it is a
regular file in a real directory, delete without following links, and
write into no link.
"""

import contextlib
import os
import stat

#: The file of each chunk, in the chunk's directory.
CHUNK_FILE = "features.safetensors"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@contextlib.contextmanager
def opened_chunk(directory, chunk):
    """The path of ``chunk``'s file, once it is known to be a regular file.

    Neither the chunk's directory nor its file may be a symbolic link, and
    the file is checked through a descriptor opened without blocking (a
    FIFO would block the reader, and safetensors holds the interpreter
    lock while it opens). The descriptor stays open while the caller reads.
    The caller reads by path: a file swapped in the instant between the
    check and the read is not caught here (its content still has to pass
    every checksum).

    Raises
    ------
    FileNotFoundError
        If the chunk is gone.
    OSError or ValueError
        For anything else than a regular file in a directory, both reached
        through no link.
    """
    folder = os.path.join(directory, chunk)
    if os.open in os.supports_dir_fd and _NOFOLLOW:
        folder_fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
        try:
            fd = os.open(CHUNK_FILE, os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    else:
        if os.path.islink(folder):
            raise ValueError(f"chunk {chunk} is a symbolic link")
        fd = os.open(os.path.join(folder, CHUNK_FILE), os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"chunk {chunk} is not a regular file")
        yield os.path.join(folder, CHUNK_FILE)
    finally:
        os.close(fd)


def remove_chunk(folder):
    """Delete a chunk's file and directory; a link in its place is removed, never followed."""
    if not (_NOFOLLOW and os.remove in os.supports_dir_fd):
        # No descriptor-relative deletion here (Windows): check, then delete by path.
        with contextlib.suppress(OSError):
            if os.path.islink(folder) or not os.path.isdir(folder):
                os.remove(folder)
            else:
                os.remove(os.path.join(folder, CHUNK_FILE))
                os.rmdir(folder)
        return
    try:
        folder_fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError:
        # Not a directory of its own (a link, a file, gone): that name alone goes.
        with contextlib.suppress(OSError):
            os.remove(folder)
        return
    try:
        with contextlib.suppress(OSError):
            os.remove(CHUNK_FILE, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # never follows a link


def make_chunk_directory(folder):
    """Create a chunk's directory; refuse (OSError) one that is a link to elsewhere."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(folder)
    if os.path.islink(folder) or not os.path.isdir(folder):
        raise OSError(f"{folder} is not a directory of the cache (a link, or a file)")
