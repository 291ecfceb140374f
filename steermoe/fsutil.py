"""Atomic replacement of output folders: a failure leaves the previous complete folder in place."""
from __future__ import annotations

import shutil
from pathlib import Path


def replace_dir(built: Path, target: Path) -> None:
    """Swap the fully built folder `built` in for `target` (two renames on one filesystem)."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)
