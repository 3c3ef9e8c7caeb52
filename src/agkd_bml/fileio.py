"""Atomic file writes: a crash or a full disk never leaves a torn or half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from agkd_bml.errors import UserError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via ``write(file_object)`` to a temporary file in ``path``'s folder, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a torn file; a full or
    read-only disk raises :class:`UserError` and leaves the old file as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions instead
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; the previous file is unchanged") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text.encode()))
