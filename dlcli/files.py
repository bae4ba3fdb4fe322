"""Writing files so that nothing the user had is lost: a temporary file beside the target,
renamed onto it only when complete; targets that are not regular files are refused; a
lock file says which run writes where."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

from .errors import DlcliError, OutputError

STALE_AFTER_S = 3600  # a temporary file without a writer's pid counts as stale after this long

# What np.load can raise on a damaged, truncated or hostile .npy/.npz (with allow_pickle=False):
# a bad header or zip directory, a corrupt deflate stream, or a header claiming an array
# larger than memory.
LOAD_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    MemoryError,
)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_not_an_input(path, inputs):
    """Refuse to write `path` when it is one of `inputs` ((what, path) pairs), the same file
    by any name: --overwrite replaces an earlier output, never what the command reads
    (`export m.npz -o m.npz --overwrite` replaced the checkpoint with its ONNX file)."""
    for what, src in inputs:
        if src is None:
            continue
        try:
            same = os.path.samefile(path, src)
        except OSError:  # either is missing (or unreadable): not the same existing file
            continue
        if same:
            raise OutputError(f"{path} is {what}; write the output to another path")


def check_new_output(path, overwrite):
    """Refuse an existing file at the output path unless `overwrite`: nothing a user has
    is replaced without being asked."""
    if Path(path).exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it, or -o a new path")


def check_target(path):
    """Refuse to write over anything but a regular file (or a new path): renaming onto a
    symlink, a FIFO or a device node would replace it with a regular file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a symbolic link"
            if stat.S_ISLNK(mode)
            else "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise OutputError(f"{path} is {kind}, not a regular file; refusing to replace it (give a new file name)")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path):
    """Delete temporaries for `path` that a killed writer left: ours are named
    `<name>.<pid>.<random>.tmp`, stale when that process is gone (or it is this one, which
    writes one file at a time); older ones without a pid when over an hour old. Only
    regular files owned by this user are touched."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            continue
        pid = m.group(1)
        stale = (not _pid_alive(int(pid)) or int(pid) == os.getpid()) if pid else now - st.st_mtime > STALE_AFTER_S
        if stale:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


@contextmanager
def _termination_deferred():
    """SIGTERM held back for a few lines (under MPI it raises an exception that unwinds
    the writer, which cannot remove a file it has not named yet): delivered when they end.
    Main thread and POSIX only; elsewhere nothing is held."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def atomic_path(path, error=DlcliError):
    """Yield a temporary path beside `path`; when the block succeeds, sync it to disk and
    rename it onto `path` (atomic on POSIX), with the permissions a plain `open` would have
    given. On failure the temporary file is removed and `path` is untouched. An OSError
    (disk full, no permission) becomes `error`, naming the file. A target that is not a
    regular file is refused; stale temporaries of earlier killed writes are removed."""
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with _termination_deferred():  # a SIGTERM between creating and naming it would leave it
            fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        check_target(path)  # it may have changed while we wrote
        os.replace(tmp, path)
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_writable(path, error=DlcliError):
    """Raise `error` now if `path` could not be written later: a run must not train for an
    hour and then fail to save. Probes with a temporary file and leaves nothing behind
    (folders it had to make for the probe are removed again)."""
    path = Path(path)
    made = []
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        folder = path.parent
        while not folder.exists():
            made.append(folder)
            folder = folder.parent
        for d in reversed(made):
            d.mkdir()
        if path.exists():
            open(path, "a").close()  # appending nothing changes nothing
        else:
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for d in made:
            try:
                d.rmdir()
            except OSError:
                pass


def lock_path(path):
    """The lock file that goes with `path`: hidden, beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


class WriterLock:
    """An advisory lock (flock) on a hidden file beside `path`, held while a run writes
    there, so a second run on the same path gets a clear error instead of a silent race.
    The lock file is removed on release; a run that took the lock checks that the file it
    locked is still the one at the lock path (else it lost a race with that removal)."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock = lock_path(path)
        self.fd = None

    def acquire(self, error=OutputError):
        import fcntl

        self.made = []
        folder = self.lock.parent
        while not folder.exists():
            self.made.append(folder)
            folder = folder.parent
        for _ in range(100):
            try:
                self.lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise error(f"cannot write {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    owner = os.read(fd, 64).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                who = f" (pid {owner})" if owner.isdigit() else ""
                raise error(f"{self.path} is being written by another dlcli run{who}; give another -o path") from None
            try:
                current = os.stat(self.lock).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return self
            os.close(fd)  # the holder removed it as we opened it: try again
        raise error(f"cannot lock {self.path}")

    def try_acquire(self):
        """True if the lock was taken; False if another run holds it."""
        try:
            self.acquire()
        except OutputError:
            return False
        return True

    def release(self):
        if self.fd is not None:
            self.lock.unlink(missing_ok=True)  # before closing, while still holding it
            os.close(self.fd)
            self.fd = None
            for folder in self.made:  # folders made for the lock alone: a run that wrote nothing leaves none
                try:
                    folder.rmdir()
                except OSError:
                    break

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
