"""Atomic file writes (a crash or a full disk never leaves a torn or half-written file) and the locks that
keep two processes from writing one run folder or one evaluation point."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from agkd_bml.errors import UserError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via ``write(file_object)`` to a temporary file in ``path``'s folder, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a torn file; a full or read-only
    disk raises :class:`UserError` and leaves the old file as it was. """
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
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; the previous file is "
                        "unchanged") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unreadable(path: str | Path, exc: BaseException) -> str:
    """Why the weights-only ``torch.load`` could not read ``path``, and what to do, in one line.

    The common cases: a whole model pickled with ``torch.save(model)`` (refused: unpickling it would run
    code), a file cut short (a copy or a write interrupted), and a file that is no PyTorch save at all. """
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "torch.nn.modules" in str(exc) or ("GLOBAL" in str(exc) and "Module" in str(exc)):
        return (f"{path} holds a whole pickled model (torch.save(model)), which cannot be loaded without "
                "running its code: save model.state_dict() instead and give it as --model-weights with a "
                "py:FILE.py:FACTORY that builds the model")
    if "GLOBAL" in str(exc) or "global" in text.lower():
        return (f"refusing to load {path}: it contains pickled objects other than tensors and plain data "
                "(possibly code); only weights-only files are accepted")
    if any(k in str(exc) for k in ("central directory", "failed reading zip", "truncated",
                                   "unexpected EOF")) \
            or isinstance(exc, EOFError):
        return (f"{path} is cut short or damaged ({text}): copy it again; in a run folder, prev.pt holds the "
                "epoch before (train --resume falls back to it)")
    return f"cannot read {path}: {text}"


#: locks this process holds: resolved path -> (file descriptor, how many holders in this process)
_HELD: dict[str, tuple[int, int]] = {}


def hold_lock(path: str | Path, what: str) -> None:
    """Take the exclusive lock ``path`` for this process (re-entrant within it), or say who holds it.

    ``flock`` locks belong to the open file, so the operating system releases them when the holder exits or
    crashes: a stale lock file never blocks anyone. The holder writes its process id and command line into the
    file, which the refusal quotes. Where ``fcntl`` is missing (Windows) nothing is locked. """
    try:
        import fcntl
    except ImportError:
        return
    key = str(Path(path).resolve())
    if key in _HELD:
        fd, count = _HELD[key]
        _HELD[key] = (fd, count + 1)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 2000).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{what} is in use by {holder}; wait for it to finish, or stop it (a process that "
                        "dies releases it)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:300]})".encode())
    _HELD[key] = (fd, 1)


def release_lock(path: str | Path) -> None:
    """Give back one hold of :func:`hold_lock`'s lock (the last one unlocks it)."""
    key = str(Path(path).resolve())
    if key not in _HELD:
        return
    fd, count = _HELD.pop(key)
    if count > 1:
        _HELD[key] = (fd, count - 1)
    else:
        os.close(fd)  # closing the file releases the flock


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text.encode()))
