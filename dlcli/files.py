"""Writing files so that nothing the user had is lost: a temporary file beside the target,
renamed onto it only when complete."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DlcliError


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
