"""The backup directory on disk: private files, the manifest and its checksums.

A backup holds every seed (operator, SYS, `cairn-control`, and in PocketBase's data every
tenant's account keys), so it is made like the data directory: the directory 0700, every
file in it 0600, written through `filemodes.write_private` or opened 0600 from the start.
`manifest.json` is written last: a directory without one is an unfinished backup.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from cairn_common import filemodes
from pb_hooks_bridge.errors import BridgeError

MANIFEST = "manifest.json"
FORMAT = "cairn-backup"
VERSION = 1


class BackupError(BridgeError):
    """A backup or restore cannot go on; the message says what is wrong and where."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fresh_dir(path: Path, what: str) -> None:
    """`path` must be missing or an empty directory; it is then made 0700."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise BackupError(f"{what} {path} exists and is not a directory")
    if path.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
            raise BackupError(f"{what} {path} is not empty ({shown}); give a new or empty "
                              "directory (nothing is overwritten)")
    filemodes.private_dir(path)


def copy_private(source: Path, target: Path) -> None:
    """Copy one regular file to a 0600 file (never following a symlink)."""
    st = source.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"{source} is not a regular file (a symlink?); refusing to copy it")
    filemodes.write_private(target, source.read_bytes())


def copy_tree(source: Path, target: Path) -> list[Path]:
    """Copy a directory of regular files (any depth) into `target`, dirs 0700, files 0600.
    Returns the target files."""
    copied: list[Path] = []
    filemodes.private_dir(target)
    for entry in sorted(source.iterdir()):
        if entry.is_symlink():
            raise BackupError(f"{entry} is a symlink; refusing to copy it")
        if entry.is_dir():
            copied.extend(copy_tree(entry, target / entry.name))
        elif entry.name.startswith("."):
            continue  # an atomic writer's temporary file
        else:
            copy_private(entry, target / entry.name)
            copied.append(target / entry.name)
    return copied


def write_manifest(root: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under `root` into the manifest and write it (last)."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {"format": FORMAT, "version": VERSION, **body, "files": files}
    filemodes.write_private(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify(root: Path) -> dict[str, Any]:
    """The manifest, after every file it lists was found with its size and checksum and no
    file it does not list is present. BackupError naming the first problem otherwise."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BackupError(f"{root}: no such backup directory")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{path} is missing: not a Cairn backup, or an unfinished one "
                          "(the manifest is written last)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is unreadable or corrupt ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not a Cairn backup manifest")
    if manifest.get("version") != VERSION:
        raise BackupError(f"{path}: backup format version {manifest.get('version')!r}; "
                          f"this cairn-bridge reads version {VERSION}")
    listed: dict[str, Any] = manifest.get("files") or {}
    for rel, want in sorted(listed.items()):
        file = root / _safe_rel(rel, path)
        if not file.is_file() or file.is_symlink():
            raise BackupError(f"backup file {file} is missing (listed in {MANIFEST})")
        if file.stat().st_size != want.get("size"):
            raise BackupError(f"backup file {file} is corrupt: {file.stat().st_size} bytes, "
                              f"the manifest says {want.get('size')}")
        if sha256_file(file) != want.get("sha256"):
            raise BackupError(f"backup file {file} is corrupt: its sha256 does not match "
                              "the manifest")
    for extra in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = extra.relative_to(root).as_posix()
        if rel != MANIFEST and rel not in listed:
            raise BackupError(f"{extra} is not in the backup's manifest; refusing a backup "
                              "that was added to")
    return manifest


def _safe_rel(rel: str, manifest: Path) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or ".." in parts:
        raise BackupError(f"{manifest} lists an unsafe path {rel!r}")
    return rel


def unzip_private(archive: Path, target: Path) -> int:
    """Extract PocketBase's backup zip into `target`: dirs 0700, files 0600, no member
    outside `target`. Returns the number of files."""
    filemodes.private_dir(target)
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                parts = PurePosixPath(name).parts
                if not parts or name.startswith("/") or ".." in parts:
                    raise BackupError(f"{archive}: unsafe member {name!r}")
                dest = target.joinpath(*parts)
                if info.is_dir():
                    filemodes.private_dir(dest)
                    continue
                filemodes.private_dir(dest.parent)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, filemodes.FILE_MODE)
                with os.fdopen(fd, "wb") as out, zf.open(info) as member:
                    while block := member.read(1 << 20):
                        out.write(block)
                count += 1
    except zipfile.BadZipFile as exc:
        raise BackupError(f"{archive} is not a readable zip ({exc})") from exc
    return count
