"""Crash-safe files: atomic replace-on-write, and the torn last line a killed appender leaves behind."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
TEMPORARY_SUFFIX = ".tmp"


def write_atomic(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Write `data` (bytes, text, or a function that writes to a binary file) to a temporary file next to `path`,
    fsync it, then os.replace it into place: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as the umask allows (mkstemp: 0600)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(path: str | Path | None, flag: str, folder: bool = False) -> None:
    """Before any work: an output `path` (a folder if `folder`, else a file) must not be the other kind, nor lie under
    a file; the error names `flag`. None (no output asked for) passes."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{flag} {path}: is a {'file' if folder else 'folder'}; expected a "
                         f"{'folder' if folder else 'file'} path")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")


def remove_temporaries(folder: str | Path) -> None:
    """Remove the temporary files that writes to `folder` cut short by a kill left behind (none may be in progress)."""
    stale = sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        log.warning("%s: removed %d temporary file(s) of writes cut short by a kill", folder, len(stale))


def truncate_torn_tail(path: str | Path) -> bytes:
    """Cut a last line without its newline (a crash mid-append) off `path`; returns the complete lines kept."""
    path = Path(path)
    if not path.exists():
        return b""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        log.warning("%s: removing a torn last line (%d bytes) left by an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return data[:keep]
