"""Path safety: the one place that decides whether a relative path may be written.

Manifests come from the network, so every path in one is hostile until checked.
:func:`check_relpath` refuses anything that could leave its directory; the
``*_at`` helpers then walk to it one component at a time with ``O_NOFOLLOW``,
so a symlink that someone else planted inside state_dir or site_dir is never
followed outward, whatever it points at.
"""

from __future__ import annotations

import errno
import os
import re

from ._errors import UnsafePathError

__all__ = [
    "DIR_MODE",
    "NAME_MAX",
    "NAME_RE",
    "SEGMENT_MAX",
    "VERSIONS_DIR",
    "check_manifest_name",
    "check_name",
    "check_relpath",
    "open_dir",
    "open_dir_at",
]

#: Model names become directory names under site_dir (docs/design.md).
NAME_RE = re.compile(r"^[a-z0-9._-]+$")

#: Longest model name: it becomes file names with suffixes (``history/<name>.json``,
#: ``.tmp-<name>-<pid>-<random>``) that must stay under the 255 bytes a name may have.
NAME_MAX = 128

#: Longest file name a path segment may have, in UTF-8 bytes: Linux's NAME_MAX (ext4,
#: xfs, btrfs, tmpfs). Refused while checking the manifest, before any download, rather
#: than met as ENAMETOOLONG while publishing.
SEGMENT_MAX = 255

#: The per-model directory of site_dir holding the immutable version trees; no entry
#: point may take its name.
VERSIONS_DIR = "versions"

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# Directories are opened like this everywhere: never through a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: The mode of every directory shardsync makes, set after the mkdir so that the umask
#: cannot narrow it: the web server (another user) must traverse state_dir to site_dir
#: and every directory below it (under umask 077 a site_dir made 0700 was a 404 in
#: nginx). Nothing secret is kept by directory modes: the few private files are 0600.
DIR_MODE = 0o755


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise UnsafePathError."""
    if len(name) > NAME_MAX:
        raise UnsafePathError(
            f"invalid model name {name[:32]!r}...: longer than {NAME_MAX} characters",
            model=name[:32])
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UnsafePathError(
            f"invalid model name {name!r}: use only a-z, 0-9, '.', '_' and '-'", model=name
        )
    return name


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative file path, else raise UnsafePathError.

    Refused: empty, absolute, a scheme (``http:``, ``file:``, ``C:``), a backslash,
    a NUL or other control character, a ``.`` or ``..`` segment, an empty segment
    (``a//b``, trailing ``/``), any segment starting with ``.tmp-`` (our own
    temporary names), and a segment longer than :data:`SEGMENT_MAX` bytes (no file
    can have that name).
    """
    why = None
    if not isinstance(path, str) or not path:
        why = "empty path"
    elif path.startswith("/"):
        why = "absolute path"
    elif "\\" in path:
        why = "backslash in path"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        why = "NUL or control character in path"
    elif any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        why = "lone surrogate in path (not valid Unicode, no file can have this name)"
    elif _SCHEME_RE.match(path):
        why = "path has a scheme"
    else:
        for seg in path.split("/"):
            if seg == "":
                why = "empty segment in path"
            elif seg in (".", ".."):
                why = f"{seg!r} segment in path"
            elif seg.startswith(".tmp-"):
                why = "reserved name in path"
            elif len(seg.encode("utf-8")) > SEGMENT_MAX:
                why = (f"a name of {len(seg.encode('utf-8'))} bytes, longer than the "
                       f"{SEGMENT_MAX} a file name may have")
            if why:
                break
    if why:
        raise UnsafePathError(f"unsafe path {path!r}: {why}", file=repr(path))
    return path


def check_manifest_name(name: str) -> str:
    """Return ``name`` if it can be an entry point ``site_dir/<model>/<name>``.

    A safe relative path (:func:`check_relpath`) of one segment that is not
    :data:`VERSIONS_DIR`; UnsafePathError otherwise.
    """
    check_relpath(name)
    if "/" in name or name == VERSIONS_DIR:
        raise UnsafePathError(
            f"manifest file name {name!r} is reserved or has a directory", file=name)
    return name


def open_dir(path: str | os.PathLike[str], *, create: bool = False) -> int:
    """Open a top-level directory (state_dir, site_dir) and return its fd.

    The top-level path itself is trusted (it comes from the operator's config);
    what lies inside it is not, see :func:`open_dir_at`. With ``create``, each missing
    directory on the path is made mode :data:`DIR_MODE` whatever the umask.
    """
    if create:
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                continue  # made meanwhile by another writer, which sets its mode
            _set_mode(os.open(d, _DIR_FLAGS), DIR_MODE)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _set_mode(fd: int, mode: int) -> None:
    """fchmod the directory ``fd`` we just made to ``mode`` (past the umask), and close it."""
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_dir_at(dir_fd: int, relpath: str, *, create: bool = False,
                mode: int = DIR_MODE) -> int:
    """Open ``relpath`` below ``dir_fd`` without following any symlink; return the fd.

    With ``create``, missing directories are made on the way, each given ``mode``
    whatever the umask and made durable (its parent fsynced once, right after the
    mkdir). A component that is
    a symlink or not a directory raises UnsafePathError (from ELOOP/ENOTDIR).
    The caller closes the fd.
    """
    fd = os.dup(dir_fd)
    try:
        for seg in relpath.split("/"):
            if not seg:
                continue
            try:
                nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(seg, mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile by another writer, which fsyncs the parent
                else:
                    _set_mode(os.open(seg, _DIR_FLAGS, dir_fd=fd), mode)
                    # The new entry is durable only once its parent is: without this a
                    # power cut can lose a new fanout dir under an object or ref already
                    # fsynced inside it.
                    os.fsync(fd)
                nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink or a file in the way
                    raise UnsafePathError(
                        f"{relpath!r}: {seg!r} is a symlink or not a directory; not following it",
                        file=relpath,
                    ) from exc
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise
