"""verify and repair: re-hash every object, check every record and published file.

:class:`Verifier` works on the parts of a :class:`~._store.Store` (its objects,
version records and site); :meth:`Store.verify <._store.Store.verify>` runs it under
the store's locks and error translation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import IntegrityError, NotFoundError, UnsafePathError
from ._objects import Objects
from ._site import MISSING, UNSAFE, Site
from ._versions import Version, Versions

__all__ = ["Problem", "Verifier"]


@dataclass(frozen=True)
class Problem:
    """One thing verify found wrong; ``str()`` says it in one line."""

    # object-corrupt | object-missing | file-missing | file-differs | entry-differs
    # | ref-dangling | record-damaged | site-unreadable
    kind: str
    detail: str
    model: str | None = None
    version: str | None = None
    path: str | None = None
    repaired: bool = False

    def __str__(self) -> str:
        where = " ".join(
            x for x in (
                f"model {self.model}" if self.model else "",
                f"version {self.version}" if self.version else "",
                f"file {self.path}" if self.path else "",
            ) if x
        )
        fixed = " (repaired)" if self.repaired else ""
        return f"{self.kind}: {where + ': ' if where else ''}{self.detail}{fixed}"


class Verifier:
    """One verify pass over a store's parts; ``entry_bytes`` gives the entry point a
    version must have (:meth:`Store.entry_bytes <._store.Store.entry_bytes>`)."""

    def __init__(self, objects: Objects, versions: Versions, site: Site,
                 entry_bytes: Callable[[Version], bytes]) -> None:
        self.objects = objects
        self.versions = versions
        self.site = site
        self.entry_bytes = entry_bytes

    def run(self, *, repair: bool = False) -> list[Problem]:
        """Every problem found (see :meth:`Store.verify <._store.Store.verify>`)."""
        problems: list[Problem] = []
        bad: set[str] = set()
        for info in list(self.objects.walk()):
            actual = self.objects.verify(info.digest)
            if actual != info.digest:
                bad.add(info.digest)
                if repair:
                    self.objects.delete(info.digest)
                problems.append(Problem(
                    "object-corrupt", f"content hashes to {actual}", path=info.digest,
                    repaired=repair,  # deleted: a version needing it reports object-missing
                ))
        for version in self._records(problems, repair):
            problems += self._verify_version(version, bad, repair)
        problems += self._unreadable(repair)
        return problems

    def _unreadable(self, repair: bool) -> list[Problem]:
        """What a web server running as another user could not read (nginx answers 404
        and says why only in its error log), by path; repair adds the read bits below
        site_dir (a hardlinked object shares them: harmless, objects are world-readable).
        ``path`` is absolute, so the message names the file whatever the model."""
        out = []
        for path, mode, is_dir in self.site.unreadable():
            need = "x (search)" if is_dir else "r (read)"
            fixed = repair and self.site.make_readable(path)
            detail = (f"a web server running as another user cannot "
                      f"{'traverse' if is_dir else 'read'} it: mode {mode:04o}, others "
                      f"need {need}")
            out.append(Problem("site-unreadable", detail, path=path, repaired=fixed))
        return out

    def _records(self, problems: list[Problem], repair: bool) -> list[Version]:
        """Every usable version record; refs to missing or damaged records and damaged
        records are appended to ``problems`` (and dropped with ``repair``)."""
        out = []
        for name in self.versions.names():
            current = self.versions.current(name)
            ids = self.versions.ids(name)
            for vid in ids:
                try:
                    out.append(self.versions.get(name, vid))
                except NotFoundError:
                    continue  # removed meanwhile, or a stray file not named like an id
                except (IntegrityError, UnsafePathError) as exc:
                    if vid == current:
                        continue  # reported as the dangling ref below
                    if repair:
                        self.versions.drop(name, vid)
                    problems.append(Problem("record-damaged", str(exc), model=name,
                                            version=vid, repaired=repair))
            if current is not None and current not in {v.id for v in out if v.name == name}:
                why = "names a damaged record" if current in ids else "names no record"
                if repair:
                    self.versions.drop_current(name)
                    if current in ids:
                        self.versions.drop(name, current)
                problems.append(Problem("ref-dangling", f"the current version {why}",
                                        model=name, version=current, repaired=repair))
        return out

    def _verify_version(self, version: Version, bad: set[str], repair: bool) -> list[Problem]:
        out: list[Problem] = []
        where: dict[str, Any] = {"model": version.name, "version": version.id}
        published = (version.id in self.site.version_ids(version.name)
                     or self.versions.current(version.name) == version.id)
        for entry in (version.manifest, *version.files):
            if entry.digest in bad or not self.objects.has(entry.digest):
                out.append(Problem("object-missing", f"needs object {entry.digest}",
                                   path=entry.path, **where))
                why = (self.site.check_published(version, entry, self.objects, rehash=True)
                       if published else None)
                if why is not None and why != MISSING:
                    # The bad object's bytes are served (a hardlink shares them): a 404
                    # fails loudly in the page, rotten weights would not.
                    fixed = repair and why != UNSAFE
                    if fixed:
                        self.site.unlink_published(version, entry)
                    out.append(Problem("file-differs", f"published file: {why}",
                                       path=entry.path, repaired=fixed, **where))
                continue
            if not published:
                continue  # recorded, never published: no files to check
            why = self.site.check_published(version, entry, self.objects)
            if why is None:
                continue
            fixed = False
            if repair and why != UNSAFE:  # never write below a planted symlink
                self.site.replace_published(version, entry, self.objects)
                fixed = True
            out.append(Problem("file-differs" if why != MISSING else "file-missing", why,
                               path=entry.path, repaired=fixed, **where))
        if self.versions.current(version.name) == version.id and not out:
            want = self.entry_bytes(version)
            if self.site.read_entry(version.name, version.manifest.path) != want:
                if repair:
                    self.site.write_entry(version.name, version.manifest.path, want)
                out.append(Problem("entry-differs", "entry point does not match the version",
                                   path=version.manifest.path, repaired=repair, **where))
        return out
