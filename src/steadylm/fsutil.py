"""Small file-system helpers, so nothing half-written is ever left behind and no two processes
write one folder: atomic writes, strict JSON, output-path checks and a folder lock."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from .errors import SteadyError

#: the lock file `FolderLock` keeps in an output folder (never deleted: see there)
LOCK_NAME = ".steadylm.lock"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to ``.NAME.tmp`` and rename; on any failure (a full disk) the temporary file goes and
    the old ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None:  # name the file the user asked for, not .NAME.tmp
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def finite(obj: Any) -> Any:
    """NaN and +-Inf -> None, recursively: JSON has no spelling for them, and Python's ``json``
    would write bare ``NaN`` that strict readers (browsers, jq, other languages) refuse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kw: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as null): every JSON steadylm writes goes through here.
    Called on every metrics line, so the copy `finite` makes is paid only when a NaN/Inf is there."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    except ValueError:  # "Out of range float values are not JSON compliant"
        return json.dumps(finite(obj), ensure_ascii=False, allow_nan=False, **kw)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, to_json(obj, indent=2) + "\n")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort where the OS does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- output paths

def _first_existing_parent(path: Path, flag: str) -> None:
    """Refuse a path under a file (``--out notes.txt/run``) before ``mkdir`` fails with a traceback."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SteadyError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder's path must be a folder or not exist yet: refuse a file, a dangling
    symbolic link or anything else with one line. A link to a folder is that folder."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise SteadyError(f"{flag} {p}: is a symbolic link to {os.readlink(p)}, which does not exist")
    if p.exists() and not p.is_dir():
        raise SteadyError(f"{flag} {p}: is a file, not a folder")
    _first_existing_parent(p, flag)
    return p


def check_out_file(path: str | os.PathLike, flag: str = "-o", *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """An output file's path: not a folder, not under a file, and not one of the command's own
    ``inputs`` - neither an input itself nor a JSON/JSONL file inside an input folder, where
    steadylm keeps the data its readers take (an HTML page or Markdown summary there is fine)."""
    p = Path(path)
    if p.is_dir():
        raise SteadyError(f"{flag} {p}: is a folder; give a file name")
    if p.is_symlink() and not p.exists():
        raise SteadyError(f"{flag} {p}: is a symbolic link to {os.readlink(p)}, which does not exist")
    _first_existing_parent(p, flag)
    target = p.resolve()
    for i in inputs:
        src = Path(i).resolve()
        if target == src or (src.is_dir() and src in target.parents and target.suffix in (".json", ".jsonl")):
            raise SteadyError(f"{flag} {p}: would overwrite the input {i}; write it somewhere else")
    return p


def folder_contents(path: Path) -> list[Path]:
    """What a folder holds, less the lock file and atomic writes a kill cut short (``.NAME.tmp``):
    a folder holding only those is empty for every purpose."""
    if not path.is_dir():
        return []
    return [p for p in path.iterdir() if p.name != LOCK_NAME and not (p.name.startswith(".") and p.name.endswith(".tmp"))]


def clear_folder(path: Path) -> None:
    """Remove everything in ``path`` but its lock file (which the caller holds)."""
    for p in path.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# --------------------------------------------------------------------------- one writer per folder

class FolderLock:
    """One writer per output folder: an advisory ``fcntl.flock`` on ``FOLDER/.steadylm.lock``,
    a file that holds the holder's PID so the refusal can name it.

    The OS releases a flock when its holder exits, however it exits (``kill -9`` included), so a
    lock whose holder died never stands in the way: stale locks are detected by construction,
    without guessing from PIDs. The file itself is never deleted - a process could then lock the
    old file while another locks a new one at the same path, and both would write. Closing the
    lock (or ending the process) releases it."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--out"):
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock (the folder must exist), or raise `SteadyError` naming the holder at once."""
        import fcntl

        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SteadyError(f"{self.flag} {self.folder}: cannot write there ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"steadylm process {holder}" if holder.isdigit() else "another steadylm process"
            raise SteadyError(f"{self.flag} {self.folder} is in use by {who} (lock {self.path}); "
                              "wait for it or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class OutDir:
    """A command's ``--out`` folder for the length of its work: checked (`check_out_dir`), created,
    locked (`FolderLock`). `close` releases it; after a start that failed before writing anything
    (only empty files there) it also removes the folder again if this command created it, so a
    bad flag leaves no trace. A folder that was there before is never removed."""

    def __init__(self, path: str | os.PathLike, flag: str = "--out", *, lock: bool = True):
        self.path = check_out_dir(path, flag)
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SteadyError(f"{flag} {self.path}: cannot create the folder ({e.strerror})") from None
        self.lock = FolderLock(self.path, flag)
        if lock:
            self.lock.acquire()

    def close(self) -> None:
        try:
            if self.created and self.lock.held and self.path.is_dir() and not any(
                    p.stat().st_size for p in self.path.rglob("*") if p.is_file() and p.name != LOCK_NAME):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.release()
