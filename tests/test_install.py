"""dlcli installed from its wheel into a site-packages the user cannot write: the
compiled kernels go to the user's cache and the second run loads them."""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
seed: 0
data: {source: builtin:xor, options: {samples: 64}}
model: {input: [2], layers: [{dense: 4}, relu, {dense: 2}]}
loss: cross_entropy
train: {epochs: 1, batch_size: 32}
"""


def read_only(folder):
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def as_user():
    """(user, drop privileges, base Python) for the child. As root the child runs as
    'nobody': root writes through any chmod (and os.access says so), so only another user
    sees the folder as read-only; that user needs a Python of this version it may run."""
    if os.geteuid() != 0:
        return None, None, sys._base_executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path("/usr/bin") / version
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and no unprivileged user 'nobody' to run as")
    if not base.exists():
        pytest.skip(f"running as root and no {base} that 'nobody' may run")

    def drop():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    # The child imports dlcli's dependencies from this environment: 'nobody' must be able
    # to read it (a checkout under a private folder, such as mktemp -d's 0700, is not).
    deps = sysconfig.get_paths()["purelib"]
    probe = subprocess.run([str(base), "-c", f"import os; os.listdir({deps!r})"], preexec_fn=drop, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and 'nobody' cannot read this environment's packages ({deps})")
    return user, drop, str(base)


@pytest.mark.slow
def test_a_read_only_install_caches_kernels_in_the_user_cache():
    user, drop, base_python = as_user()
    top = Path(tempfile.mkdtemp(prefix="dlcli-install-"))  # not under pytest's root-only tmp
    try:
        top.chmod(0o755)
        src = top / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src)
        shutil.copytree(ROOT / "dlcli", src / "dlcli", ignore=shutil.ignore_patterns("__pycache__"))
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(top / "dist"), str(src)], check=True, timeout=300)
        wheel = next((top / "dist").glob("dlcli-*.whl"))
        venv = top / "venv"
        subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True, timeout=300)
        site = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        # the dependencies come from this environment (a path line: its own .pth files,
        # among them the editable dlcli's, are not run)
        (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        read_only(site / "dlcli")
        home = top / "home"
        (home / "work").mkdir(parents=True)
        (home / "work" / "spec.yaml").write_text(SPEC)
        if user is not None:
            for path in [home, home / "work", home / "work" / "spec.yaml"]:
                os.chown(path, user.pw_uid, user.pw_gid)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}

        def train():
            return subprocess.run(
                [str(venv / "bin" / "dlcli"), "train", "spec.yaml"],
                cwd=home / "work",
                env=env,
                preexec_fn=drop,
                capture_output=True,
                text=True,
                timeout=600,
            )

        cache = home / ".cache" / "dlcli" / "numba"

        def cached():
            return {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc")}

        first = train()
        assert first.returncode == 0, first.stderr
        after_first = cached()
        assert any(p.suffix == ".nbc" for p in after_first), "no compiled kernel in the user cache"
        assert not [p for p in (site / "dlcli").rglob("*") if p.suffix in (".nbi", ".nbc")]
        second = train()
        assert second.returncode == 0, second.stderr
        # a kernel compiled again would write its .nbc and rewrite its index
        assert cached() == after_first, "the second run compiled kernels again"
    finally:
        for path in [top, *top.rglob("*")]:  # make it removable again
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)
