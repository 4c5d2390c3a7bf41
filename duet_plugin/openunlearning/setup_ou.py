"""``duet-plugin setup-ou``: OpenUnlearning at the commit the plugin is tested with, in one command.

The framework is not on PyPI. This module clones it (from GitHub, a local mirror, or a copy such as ``git archive``
writes), checks out the pinned commit, and records where it lives, so that ``duet-plugin demo``, ``train``, ``eval``
and ``doctor`` find it without ``--ou-root``. ``--ou-root`` and ``$OU_ROOT`` still take precedence (see
:func:`duet_plugin.openunlearning.launcher.find_ou_root`).

Nothing of the user's is replaced: the checkout is assembled in a hidden sibling folder and renamed into place only
once it is verified; an existing folder is reused only when it already holds the pinned commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

OU_URL = "https://github.com/locuslab/open-unlearning"
OU_COMMIT = "d3d7cf9e6b3c125d16687d4232680d8d83548f1a"
#: The git tree of ``OU_COMMIT``: identifies an exported copy (no ``.git``) of that commit.
OU_TREE = "ee86b148c6650e1d2f866f7a748be413b97806b1"
SHORT = OU_COMMIT[:7]
_NETWORK_ERRORS = ("could not resolve host", "unable to access", "failed to connect", "network is unreachable")


def is_ou_root(path: Path) -> bool:
    """An OpenUnlearning checkout: OU's ``src/train.py`` and ``configs/unlearn.yaml`` are there."""
    return (path / "src" / "train.py").is_file() and (path / "configs" / "unlearn.yaml").is_file()


class SetupError(RuntimeError):
    """Setting up OpenUnlearning failed; the message names the fix. Nothing of the user's was changed."""


# -- where the checkout is recorded ---------------------------------------------------------------------------


def config_file() -> Path:
    """``$DUET_PLUGIN_CONFIG``, else ``$XDG_CONFIG_HOME/duet-plugin/config.json`` (``~/.config`` by default)."""
    if os.environ.get("DUET_PLUGIN_CONFIG"):
        return Path(os.environ["DUET_PLUGIN_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "duet-plugin" / "config.json"


def cache_root() -> Path:
    """duet-plugin's cache folder: ``$XDG_CACHE_HOME/duet-plugin`` (``~/.cache`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duet-plugin"


def default_dir() -> Path:
    """Where ``setup-ou`` (and ``demo``, when it finds no framework) puts OU."""
    return cache_root() / f"open-unlearning-{SHORT}"


def recorded_ou_root() -> Path | None:
    """The checkout ``setup-ou`` recorded, if any (whether or not it still exists)."""
    path = config_file()
    try:
        value = json.loads(path.read_text()).get("ou_root")
    except FileNotFoundError:
        return None
    except (ValueError, AttributeError) as err:  # not JSON, or JSON but not an object
        raise SetupError(f"{path} is not a duet-plugin config file ({err}); delete it and rerun setup-ou.") from err
    return Path(value) if value else None


def record_ou_root(root: Path) -> Path:
    """Write ``root`` to the config file (other keys kept); returns the file."""
    path = config_file()
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
    data["ou_root"] = str(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


# -- identifying a checkout -----------------------------------------------------------------------------------


#: For the read-only queries that identify a checkout: no user or system git configuration (line-ending
#: conversion, global excludes) and no ownership check of shared checkouts, so the same files give the same answer
#: everywhere. Cloning keeps the user's configuration (proxies, credentials).
_QUERY_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, query: bool = False
) -> subprocess.CompletedProcess:
    prefix = ["-c", "safe.directory=*"] if query else []
    return subprocess.run(
        ["git", *prefix, *args],
        cwd=cwd,
        env={**os.environ, **(_QUERY_ENV if query else {}), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def require_git() -> None:
    if shutil.which("git") is None:
        raise SetupError(
            "git is not installed, and setting up OpenUnlearning needs it: install git (e.g. `apt-get install git`), "
            "or clone locuslab/open-unlearning elsewhere and point OU_ROOT (or --ou-root) at it."
        )


@contextlib.contextmanager
def _indexed(path: Path) -> Iterator[tuple[dict[str, str], str | None]]:
    """Index the files under ``path`` in a scratch repository, as git would commit them (``.gitignore``
    honoured); yields the git environment that addresses that index and the tree id (None if git failed)."""
    with tempfile.TemporaryDirectory(prefix="duet-plugin-tree-") as tmp:
        env = {"GIT_DIR": str(Path(tmp) / ".git"), "GIT_WORK_TREE": str(path)}
        ok = (
            _git("init", "--quiet", tmp, query=True).returncode == 0
            and _git("add", "--all", ".", cwd=path, env=env, query=True).returncode == 0
        )
        proc = _git("write-tree", cwd=path, env=env, query=True) if ok else None
        yield env, (proc.stdout.strip() if proc is not None and proc.returncode == 0 else None)


def tree_of(path: Path) -> str | None:
    """The git tree id of the files under ``path`` as git would commit them."""
    with _indexed(path) as (_, tree):
        return tree


def commit_of(path: Path) -> str | None:
    """``OU_COMMIT`` when ``path`` holds it (a git checkout at it, or an exported copy of its tree), else the
    checkout's commit id, else None."""
    if (path / ".git").exists():
        proc = _git("rev-parse", "HEAD", cwd=path, query=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return OU_COMMIT if tree_of(path) == OU_TREE else None


# -- setting up -----------------------------------------------------------------------------------------------


def setup_ou(dest: Path | None = None, source: str | None = None, say: Callable[[str], None] = print) -> Path:
    """Put OU at ``OU_COMMIT`` in ``dest`` (default :func:`default_dir`) from ``source`` (default GitHub), record
    it and return its path. Reuses ``dest`` when it already holds that commit."""
    dest = (dest or default_dir()).expanduser().resolve()
    require_git()
    if dest.exists() and not dest.is_dir():
        raise SetupError(f"{dest} is a file; choose another --dir (nothing was changed).")
    if dest.is_dir() and any(dest.iterdir()):
        if not is_ou_root(dest):
            raise SetupError(
                f"{dest} exists and is not an OpenUnlearning checkout; choose another --dir (nothing was changed)."
            )
        commit = commit_of(dest)
        if commit != OU_COMMIT:
            fix = f"`git -C {shlex.quote(str(dest))} checkout {SHORT}`" if (dest / ".git").exists() else "a fresh copy"
            raise SetupError(
                f"{dest} holds OpenUnlearning at {commit[:7] if commit else 'an unknown commit'}, not {SHORT}, the "
                f"commit duet-plugin is tested with. Use {fix}, or choose another --dir (nothing was changed)."
            )
        say(f"OpenUnlearning {SHORT} is already in {dest}")
    else:
        _fetch(dest, source or OU_URL, say)
    record_ou_root(dest)
    say(f"Recorded {dest} in {config_file()}: duet-plugin commands now find it without --ou-root.")
    return dest


def _fetch(dest: Path, source: str, say: Callable[[str], None]) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as err:
        raise SetupError(f"cannot write next to {dest} ({err}); choose a --dir you can write to.") from err
    try:
        local = Path(source).expanduser()
        if local.is_dir() and not _is_git_repo(local):
            _copy_tree(local.resolve(), tmp)
            say(f"Copied OpenUnlearning {SHORT} from {local} into {dest} (its files match the commit's)")
        else:
            say(f"Cloning OpenUnlearning {SHORT} from {source} into {dest}")
            _clone(str(local) if local.is_dir() else source, tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private
        try:
            if dest.is_dir():
                dest.rmdir()  # empty (checked by the caller)
            tmp.rename(dest)
        except OSError as err:  # something appeared in dest meanwhile
            raise SetupError(f"cannot move the checkout into {dest} ({err}); nothing of yours was changed.") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_git_repo(path: Path) -> bool:
    """A clone (``.git`` inside) or a bare mirror (``HEAD`` and ``objects/``), not a folder inside another repo."""
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _copy_tree(src: Path, tmp: Path) -> None:
    """Copy an exported OU tree, after checking that it is ``OU_COMMIT``'s: only the files git would track."""
    if not is_ou_root(src):
        raise SetupError(
            f"{src} is not an OpenUnlearning checkout or mirror (no src/train.py, configs/unlearn.yaml); pass "
            f"--from a clone, a mirror or an exported copy of locuslab/open-unlearning."
        )
    with _indexed(src) as (env, tree):
        if tree != OU_TREE:
            raise SetupError(
                f"{src} holds OpenUnlearning files, but not those of commit {SHORT} (git tree "
                f"{(tree or '?')[:12]}, expected {OU_TREE[:12]}); pass --from a clone or mirror that has commit "
                f"{SHORT}."
            )
        proc = _git("checkout-index", "--all", f"--prefix={tmp}/", cwd=src, env=env, query=True)
        if proc.returncode != 0:
            raise SetupError(f"copying {src} failed: {proc.stderr.strip()}")


def _clone(source: str, tmp: Path) -> None:
    proc = _git("clone", "--quiet", "--no-checkout", source, str(tmp))
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if any(marker in err.lower() for marker in _NETWORK_ERRORS):
            raise SetupError(
                f"could not reach {source} ({err.splitlines()[-1]}). Without network, copy a clone or mirror of "
                f"locuslab/open-unlearning to this machine and pass it: duet-plugin setup-ou --from PATH."
            )
        raise SetupError(f"git clone {source} failed: {err.splitlines()[-1] if err else 'no message'}")
    proc = _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", OU_COMMIT, cwd=tmp)
    if proc.returncode != 0:
        raise SetupError(
            f"{source} has no commit {SHORT}: is it locuslab/open-unlearning with its full history? (A shallow "
            f"mirror lacks older commits.) {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
        )
    if not is_ou_root(tmp):
        raise SetupError(f"{source} at {SHORT} is not OpenUnlearning (no src/train.py, configs/unlearn.yaml).")
