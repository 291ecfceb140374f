"""Atomic writes: a failure leaves the previous complete file or folder in place."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from steermoe.errors import StorageError


def replace_dir(built: Path, target: Path) -> None:
    """Swap the fully built folder `built` in for `target` (two renames on one filesystem)."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a torn write."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# a write the user can make succeed (free space, a writable folder), not a bug
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def storage_errors(folder: Path, what: str, kept: str, partial: Path | None = None):
    """A write under `folder` that failed because the disk is full or read-only (or the folder unwritable) becomes
    one StorageError naming the folder and what was kept; `partial` (a folder being built) is removed on any
    failure."""
    try:
        yield
    except BaseException as err:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        problem = storage_problem(folder, err) if isinstance(err, Exception) else None
        if problem is None:
            raise
        raise StorageError(f"cannot write the {what} {folder}: {problem} ({type(err).__name__}: {err}). Free space "
                           f"or make the folder writable, then run the same command again: {kept}") from None


def storage_problem(path: Path, err: Exception | None = None) -> str | None:
    """Why files cannot be written under `path` (its disk is full or read-only), or None. Checked after a write
    failed, first in the error (libraries report a full disk in their own ways: torch.save a RuntimeError,
    safetensors a SafetensorError whose text holds the OS's), then on the disk itself."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return err.strerror
    for number in STORAGE_ERRNOS - {errno.EPERM, errno.EACCES}:  # "Permission denied" is also a reading error
        if err is not None and os.strerror(number) in str(err):
            return os.strerror(number)
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    if stats.f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only file system"
    if stats.f_bavail * stats.f_frsize < 1 << 20:
        return f"the disk holding {path} is full ({stats.f_bavail * stats.f_frsize // 1024} KiB free)"
    if not os.access(path, os.W_OK):
        return f"{path} is not writable"
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return f"files are limited to {limit // 1024} KiB (ulimit -f)"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
