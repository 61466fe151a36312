"""Private files and directories: create them so, tighten our own, refuse loose ones.

SPEC §11: the data directory is 0700, and secrets, creds and PocketBase's database are never
readable by other local users. Like sshd ("UNPROTECTED PRIVATE KEY FILE") and PostgreSQL
(data directory permissions), a component that finds a secret open to others refuses to
start, with the fix in the message, rather than using it.

- "Private" means: owned by the user running Cairn and no group/other permission bit at all
  (files 0600 or stricter, directories 0700). Group/other *write* counts as much as read: a
  replaced seed or creds file is as bad as a copied one.
- Symlinks: a secret path is never followed. Every rewrite is a rename that would replace
  the link, not its target, and the target's own directory is out of our sight, so a
  secret that is a symlink is refused (fix: put the real file there). Tightening never
  follows a link either (it would chmod whatever the link points at). `check_tree` allows
  only the links its caller names (the data dir's link to the repo's nats-server.conf).
- A missing path is not a loose one: the checks pass it, and the code that needs the file
  reports its absence in its own words.
- Files that are not secrets but decide what runs (the agent's config and scripts) may be
  read by anyone; `check_not_writable` refuses them when another user can change them.
- Windows has no POSIX modes: the checks and tightening are no-ops there (the agent relies
  on its directory's ACL).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_OTHERS = 0o077  # any group or other permission bit
_POSIX = os.name == "posix"


class NotPrivateError(Exception):
    """A secret file or directory is open to other local users (or is theirs, or a link);
    the message names the path and the command that fixes it. `problem` is the message
    without its "refusing to start: " prefix, for callers that refuse something else."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"refusing to start: {problem}")
        self.problem = problem


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` atomically with a 0600 file: readers see the old or the new content,
    never a half-written or briefly world-readable file. Missing parents are made 0700."""
    parent = path.parent
    if not parent.is_dir():
        private_dir(parent, tighten=False)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Make `path` (and missing parents) 0700. An existing directory of ours is tightened
    to 0700 too unless `tighten` is false (then `check_private` judges it)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent creator is fine
            directory.mkdir(DIR_MODE)
        if _POSIX:
            os.chmod(directory, DIR_MODE)  # the umask may have taken owner bits too
    if tighten and not missing:
        tighten_tree(path, recursive=False)
    return path


def tighten_tree(path: Path, *, recursive: bool = True) -> list[Path]:
    """Take group/other bits off `path` and (recursively) what is under it: for Cairn's own
    files from an older run. Links are not followed, and entries of another owner are left
    for the checks to report. Returns what was changed. Top-down, so a directory is closed
    before its entries are touched."""
    if not _POSIX:
        return []
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    changed: list[Path] = []
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return changed
    is_dir = stat.S_ISDIR(st.st_mode)
    if st.st_mode & _OTHERS or (is_dir and stat.S_IMODE(st.st_mode) != DIR_MODE):
        os.chmod(path, DIR_MODE if is_dir else stat.S_IMODE(st.st_mode) & 0o700)
        changed.append(path)
    if is_dir and recursive:
        for child in _entries(path):
            changed += tighten_tree(child)
    return changed


def check_private(path: Path, what: str) -> None:
    """Raise NotPrivateError (with the fix) when `path` is a symlink, is not ours, or has any
    group/other bit. `what` says what it holds, e.g. "the operator seed"."""
    if not _POSIX:
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    problem = _problem(path, st, what)
    if problem:
        raise NotPrivateError(problem)


def check_tree(root: Path, what: str, *, links: Collection[Path] = ()) -> None:
    """`check_private` on `root` and everything under it; the symlinks in `links` (exact
    paths) are allowed and not followed, any other link is refused."""
    if not _POSIX:
        return
    check_private(root, what)
    if not root.is_symlink() and root.is_dir():
        _check_below(root, f"in {what}", {os.path.abspath(p) for p in links})


def _check_below(directory: Path, what: str, allowed: set[str]) -> None:
    for child in _entries(directory):
        if child.is_symlink() and os.path.abspath(child) in allowed:
            continue
        check_private(child, what)
        if not child.is_symlink() and child.is_dir():
            _check_below(child, what, allowed)


class WritableByOthersError(Exception):
    """A file that decides what Cairn runs (a config with whitelists, a script, their
    directory) can be changed by other local users; the message names the path and the fix.
    `problem` is the message without its "refusing to start: " prefix, for callers that
    refuse something else (a script about to run)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"refusing to start: {problem}")
        self.problem = problem


def check_not_writable(path: Path, what: str) -> None:
    """Raise WritableByOthersError (with the fix) when `path` has a group/other write bit or
    is owned by neither the user running Cairn nor root. For files that are not secrets
    (reading them is fine) but whose content is run: whoever can rewrite them runs code as
    us. A link is followed (these files are read, never rewritten by us), and the link
    itself must be ours or root's too; its directory is the caller's to check."""
    if not _POSIX:
        return
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        return
    problem = _write_problem(path, link, st, what)
    if problem:
        raise WritableByOthersError(problem)


def _write_problem(path: Path, link: os.stat_result, st: os.stat_result,
                   what: str) -> str | None:
    """What lets another user change `path`, ending with the command that fixes it; or None."""
    shown, quoted = f"{path} ({what})", shlex.quote(str(path))
    me = os.geteuid()
    trusted = (me, 0)
    issues: list[str] = []
    fixes: list[str] = []
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        issues.append(f"is a symlink owned by {_user(link.st_uid)}")
        fixes.append(f"ln -sfn {shlex.quote(os.readlink(path))} {quoted}")  # now ours
    if st.st_uid not in trusted:
        issues.append(f"is owned by {_user(st.st_uid)}, not by {_user(me)} who runs Cairn "
                      "or root")
        fixes.append(f"chown {shlex.quote(_user(me))} {quoted}")
    if st.st_mode & 0o022:
        who = "group and other" if st.st_mode & 0o022 == 0o022 else (
            "group" if st.st_mode & 0o020 else "other")
        issues.append(f"is writable by {who} users (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod go-w {quoted}")
    if not issues:
        return None
    return f"{shown} {' and '.join(issues)}; fix with: {' && '.join(fixes)}"


def read_private(path: Path, what: str) -> str:
    """The text of a secret file, after the same checks as `check_private`, made on the
    opened file itself (no window between check and read; links are not followed).
    A missing file raises FileNotFoundError."""
    if not _POSIX:
        return path.read_text()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        if path.is_symlink():
            check_private(path, what)  # raises, with the fix
        raise
    with os.fdopen(fd, "rb") as handle:
        problem = _problem(path, os.fstat(handle.fileno()), what)
        if problem:
            raise NotPrivateError(problem)
        return handle.read().decode()


def _problem(path: Path, st: os.stat_result, what: str) -> str | None:
    """What is wrong with `path`, ending with the shell command that fixes it; or None."""
    shown, quoted = f"{path} ({what})", shlex.quote(str(path))
    if stat.S_ISLNK(st.st_mode):
        real = shlex.quote(os.path.realpath(path))
        return (f"{shown} is a symlink (to {os.readlink(path)}); Cairn "
                "does not follow links to secrets, put the real file here instead; fix "
                f"with: rm {quoted} && mv {real} {quoted}")
    issues: list[str] = []
    fixes: list[str] = []
    me = os.geteuid()
    if st.st_uid != me:
        issues.append(f"is owned by {_user(st.st_uid)}, not by {_user(me)} who runs Cairn")
        fixes.append(f"chown {shlex.quote(_user(me))} {quoted}")
    loose = st.st_mode & _OTHERS
    if loose:
        is_dir = stat.S_ISDIR(st.st_mode)
        if loose & 0o044:
            kind = "readable"
        elif loose & 0o022:
            kind = "writable"
        else:
            kind = "searchable" if is_dir else "executable"
        issues.append(f"is {kind} by other users (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod {700 if is_dir else 600} {quoted}")
    if not issues:
        return None
    return f"{shown} {' and '.join(issues)}; fix with: {' && '.join(fixes)}"


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _entries(directory: Path) -> list[Path]:
    """The directory's entries; one that vanished meanwhile (a server's temp file) is fine."""
    try:
        with os.scandir(directory) as it:
            return sorted(Path(entry.path) for entry in it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a failing fsync of a directory is not worth a crash."""
    if not _POSIX:
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
