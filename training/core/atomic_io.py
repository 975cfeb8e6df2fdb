"""Atomic file I/O: a reader sees the old file or the whole new one, never part of one,
and what a killed run leaves behind is recognised and removed."""

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

PROCESS_STARTED = time.time()
"""When this process started (imported this module): what is older and unheld is a
leftover of an earlier run."""


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- atomic writes
#
# Every temp file and staging directory is held with an exclusive flock by the process
# writing it, from creation until it is renamed into place. The kernel drops the lock
# when that process dies, however it dies, so ``remove_leftovers`` can tell what a killed
# run left behind (unheld, older than this process) from what a running job is writing.


@contextlib.contextmanager
def _held(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on ``path`` (a file or a directory) while the block runs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _is_held(path: Path) -> bool:
    """True while some process holds the flock of ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_leftovers(parent: Path, pattern: str) -> list[Path]:
    """Remove what interrupted runs left under ``parent``: entries matching the glob
    ``pattern`` that are older than this process and held by no process. Returns them."""
    removed = []
    for path in sorted(parent.glob(pattern)):
        try:
            if path.lstat().st_mtime >= PROCESS_STARTED or _is_held(path):
                continue
        except FileNotFoundError:  # its owner just finished with it
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_writer(path: Path, exclusive: bool = False) -> Iterator[BinaryIO]:
    """A binary handle on a held temp file beside ``path``; when the block completes the
    file is fsynced and renamed over ``path`` (readers see the old file or the whole new
    one, never part of one). With ``exclusive`` it is hard-linked instead, which never
    replaces: an existing ``path`` raises FileExistsError and is left as it was
    (write-once records). On an error the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            (os.link if exclusive else os.replace)(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path, exclusive) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def replacing_dir(final: Path) -> Iterator[Path]:
    """A fresh, held staging directory beside ``final`` to build its replacement in,
    swapped into place (:func:`publish_dir`) when the block completes and removed on an
    error. Staging directories that killed runs left beside ``final`` are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.staging-"
    remove_leftovers(final.parent, f"{prefix}*")
    staged = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix))
    with _held(staged):
        try:
            yield staged
            publish_dir(staged, final)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise


def publish_dir(staged: Path, final: Path) -> None:
    """Swap a fully written ``staged`` directory into place as ``final``.

    The old directory is moved aside first and removed only after the rename, so
    ``final`` is never a mix: it is the complete old version, briefly absent, or the
    complete new one.
    """
    retired = None
    if final.exists():
        retired = final.with_name(f".{final.name}.retired-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
    os.replace(staged, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
