"""Writing files so that nothing the user had is lost: a temporary file beside the target,
renamed onto it only when complete."""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

from .errors import DlcliError

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


@contextmanager
def atomic_path(path, error=DlcliError):
    """Yield a temporary path beside `path`; when the block succeeds, sync it to disk and
    rename it onto `path` (atomic on POSIX), with the permissions a plain `open` would have
    given. On failure the temporary file is removed and `path` is untouched. An OSError
    (disk full, no permission) becomes `error`, naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
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
