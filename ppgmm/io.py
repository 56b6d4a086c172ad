"""Atomic file writes: every file ppgmm writes appears whole or not at all.

A write goes to a temporary file in the target's folder (same file system), is flushed
to disk, then renamed over the target with :func:`os.replace`, which is atomic. An
interrupted or failed write leaves the target as it was (absent, or the previous file)
and removes the temporary file; only a process killed outright (SIGKILL, power loss) can
leave a hidden ``.NAME.*.tmp`` beside the target, which is safe to delete. Stores that are
folders (Zarr) get the same guarantee from :func:`atomic_store`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_write", "atomic_store", "check_writable"]


def check_writable(path: str | os.PathLike) -> str:
    """The absolute ``path``, after checking that a file can be written there.

    Raises
    ------
    IsADirectoryError
        If ``path`` is a folder.
    FileNotFoundError
        If the folder ``path`` would go in does not exist.
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a folder; give a "
                                "file name")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: the folder {folder!r} "
                                "does not exist")
    return target


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Write to the yielded path (by name: netCDF writers open it themselves). When the block
    ends without an exception the file is fsynced and renamed to ``path``; otherwise it is
    deleted and ``path`` is untouched. A missing folder or a ``path`` that is a folder is
    refused before anything is written (:func:`check_writable`).

    Examples
    --------
    >>> with atomic_write("report.html") as tmp:  # doctest: +SKIP
    ...     with open(tmp, "w") as fh:
    ...         fh.write(text)
    """
    target = os.path.realpath(check_writable(path))  # a symbolic link: its file is replaced
    folder, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if os.path.exists(target):
            # keep the target's permission bits (mkstemp creates the file as 0600)
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_store(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; on success it replaces the store ``path``.

    For stores that are folders (Zarr). The old store is renamed aside, the new one renamed
    into place and the old one deleted, so ``path`` holds the old store or the new one,
    never a mixture; a failed write (or a failed swap) leaves ``path`` as it was. A symbolic
    link is followed: the store it points to is replaced. A missing parent folder, or a
    ``path`` that exists and is neither a Zarr store nor an empty folder, is refused before
    anything is written.
    """
    target = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: the folder {folder!r} "
                                "does not exist")
    if os.path.lexists(target) and not (os.path.isfile(os.path.join(target, ".zgroup"))
                                        or (os.path.isdir(target) and not os.listdir(target))):
        raise FileExistsError(f"cannot write {os.fspath(path)!r}: it exists and is not a Zarr "
                              "store; remove it or give another name")
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    old = tmp + ".old"
    try:
        yield tmp
        if os.path.lexists(target):
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(target):
            os.replace(old, target)  # the swap failed half-way: the old store goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
