"""OSTree repositories through libostree.

It opens and creates repositories, writes commits from a directory with deterministic metadata,
resolves refs, and reads commits back as plain Python values. Everything above it deals in
checksums, refs and dicts; no GLib type or ``GLib.Error`` leaves this module.

What it leaves to others: deciding what goes into a commit (``compose``), signing (``trust``),
deployment policy (``device``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from afield.errors import RepositoryError
from afield.ostree._gi import Gio, GLib, OSTree

__all__ = [
    "CommitInfo",
    "DeltaFile",
    "PullStats",
    "Repo",
    "StaticDelta",
    "is_checksum",
    "static_delta_dir",
]

_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")
# Refs as OSTree accepts them, kept stricter: no remote prefix, no spaces.
_REF = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")

RepoMode = Literal["archive", "bare", "bare-user"]
_MODES: dict[str, Any] = {
    "archive": OSTree.RepoMode.ARCHIVE,
    "bare": OSTree.RepoMode.BARE,
    "bare-user": OSTree.RepoMode.BARE_USER,
}


def is_checksum(text: str) -> bool:
    """Whether ``text`` is a full OSTree object checksum (64 lowercase hex digits)."""
    return bool(_CHECKSUM.match(text))


@dataclass(frozen=True)
class CommitInfo:
    """A commit read back from a repository: its checksum, subject, time and metadata."""

    checksum: str
    subject: str
    timestamp: int
    parent: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The standard OSTree ``version`` metadata key."""
        value = self.metadata.get("version")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PullStats:
    """What a pull over HTTP cost: bytes transferred and objects fetched."""

    bytes_transferred: int
    objects_fetched: int
    objects_requested: int


PullProgress = Callable[[PullStats], None]


@dataclass(frozen=True)
class DeltaFile:
    """One file of a static delta: ``superblock`` or a part (``0``, ``1``...), as served."""

    name: str
    length: int
    sha256: str


@dataclass(frozen=True)
class StaticDelta:
    """A static delta in a repository: from one commit to another, and its files.

    ``directory`` is relative to the repository (``deltas/xx/yyyy-zzzz``), the layout libostree
    and every OSTree client expect.
    """

    from_commit: str
    to_commit: str
    directory: str
    files: tuple[DeltaFile, ...]

    @property
    def length(self) -> int:
        """The bytes a device downloads to apply this delta."""
        return sum(f.length for f in self.files)


def _b64(checksum: str) -> str:
    # libostree names deltas with base64 of the binary checksum, '/' replaced by '_', no padding.
    return base64.b64encode(bytes.fromhex(checksum)).decode("ascii").rstrip("=").replace("/", "_")


def static_delta_dir(from_commit: str, to_commit: str) -> str:
    """Where libostree keeps the delta ``from_commit`` -> ``to_commit``, relative to the repo."""
    for checksum in (from_commit, to_commit):
        if not is_checksum(checksum):
            raise RepositoryError(f"{checksum!r} is not a commit checksum", user_error=True)
    name = _b64(from_commit)
    return f"deltas/{name[:2]}/{name[2:]}-{_b64(to_commit)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _variant(value: Any) -> GLib.Variant:
    """Turn a plain value into the GVariant afield uses for it in commit metadata."""
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("t", value) if value >= 0 else GLib.Variant("x", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return GLib.Variant("as", list(value))
    raise RepositoryError(f"commit metadata value of type {type(value).__name__} not supported")


class Repo:
    """An OSTree repository on disk.

    Args:
        path: the repository directory (the one holding ``config`` and ``objects/``).
        handle: an opened ``OSTree.Repo``; use :meth:`open` or :meth:`create` instead.
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._repo = handle

    @classmethod
    def open(cls, path: Path) -> Repo:
        """Open an existing repository; :class:`RepositoryError` if there is none at ``path``."""
        if not (path / "config").is_file():
            raise RepositoryError(
                f"{path}: not an OSTree repository (no config file)", path=path, user_error=True
            )
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
        try:
            repo.open(None)
        except GLib.Error as e:
            raise RepositoryError(f"{path}: cannot open OSTree repository: {e.message}") from e
        return cls(path, repo)

    @classmethod
    def create(cls, path: Path, mode: RepoMode = "archive") -> Repo:
        """Create a repository at ``path`` (idempotent), or open the one already there."""
        if (path / "config").is_file():
            return cls.open(path)
        path.mkdir(parents=True, exist_ok=True)
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
        try:
            repo.create(_MODES[mode], None)
        except GLib.Error as e:
            raise RepositoryError(f"{path}: cannot create OSTree repository: {e.message}") from e
        return cls(path, repo)

    # -- refs -----------------------------------------------------------------------------------

    def refs(self) -> dict[str, str]:
        """All local refs and the commit each points to."""
        try:
            _, refs = self._repo.list_refs(None, None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot list refs: {e.message}") from e
        return dict(sorted(refs.items()))

    def resolve(self, ref_or_checksum: str) -> str:
        """The commit checksum a ref names, or the checksum itself if that commit is here.

        A unique prefix of at least 8 hex digits of a commit in the repository also resolves.
        """
        text = ref_or_checksum.strip()
        if is_checksum(text):
            if not self.has_commit(text):
                raise RepositoryError(
                    f"{self.path}: no commit {text}", path=self.path, user_error=True
                )
            return text
        refs = self.refs()
        if text in refs:
            return refs[text]
        if re.fullmatch(r"[0-9a-f]{8,63}", text):
            matches = sorted({c for c in self.commits() if c.startswith(text)})
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RepositoryError(
                    f"{self.path}: commit prefix {text} is ambiguous ({len(matches)} commits)",
                    path=self.path,
                    user_error=True,
                )
        known = ", ".join(refs) or "none"
        raise RepositoryError(
            f"{self.path}: no ref or commit {text!r}; refs here: {known}",
            path=self.path,
            user_error=True,
        )

    def set_ref(self, ref: str, checksum: str | None) -> None:
        """Point ``ref`` at ``checksum`` (or delete it when ``checksum`` is None), atomically."""
        _check_ref(ref)
        if checksum is not None and not self.has_commit(checksum):
            raise RepositoryError(f"{self.path}: cannot set ref {ref}: no commit {checksum}")
        try:
            self._repo.set_ref_immediate(None, ref, checksum, None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot set ref {ref}: {e.message}") from e

    # -- commits --------------------------------------------------------------------------------

    def has_commit(self, checksum: str) -> bool:
        """Whether the commit object ``checksum`` is in this repository."""
        try:
            _, have = self._repo.has_object(OSTree.ObjectType.COMMIT, checksum, None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot look up {checksum}: {e.message}") from e
        return bool(have)

    def has_complete_commit(self, checksum: str) -> bool:
        """Whether the commit and every object it needs are here (not an interrupted pull)."""
        if not self.has_commit(checksum):
            return False
        try:
            _, _, state = self._repo.load_commit(checksum)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot load commit {checksum}: {e.message}") from e
        return not state & OSTree.RepoCommitState.PARTIAL

    def commits(self) -> list[str]:
        """Checksums of every commit object in the repository."""
        try:
            objects = self._repo.list_commit_objects_starting_with("", None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot list commits: {e.message}") from e
        found = objects[1] if isinstance(objects, tuple) else objects
        return sorted(v.unpack()[0] for v in found)

    def commit_info(self, ref_or_checksum: str) -> CommitInfo:
        """Read a commit and its metadata."""
        checksum = self.resolve(ref_or_checksum)
        try:
            _, variant = self._repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot load commit {checksum}: {e.message}") from e
        metadata = variant.get_child_value(0).unpack()
        parent = OSTree.commit_get_parent(variant)
        subject = variant.get_child_value(3).get_string()
        timestamp = OSTree.commit_get_timestamp(variant)
        return CommitInfo(
            checksum=checksum,
            subject=subject,
            timestamp=int(timestamp),
            parent=parent,
            metadata=metadata,
        )

    def commit_object_path(self, checksum: str) -> Path:
        """Where the commit object file lives (its sha256 is the checksum in archive mode)."""
        return self.path / "objects" / checksum[:2] / f"{checksum[2:]}.commit"

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A repository transaction: committed on success, aborted (repo unchanged) on error."""
        try:
            self._repo.prepare_transaction(None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot start transaction: {e.message}") from e
        try:
            yield
        except BaseException:
            self._repo.abort_transaction(None)
            raise
        try:
            self._repo.commit_transaction(None)
        except GLib.Error as e:
            self._repo.abort_transaction(None)
            raise RepositoryError(f"{self.path}: cannot finish transaction: {e.message}") from e

    def commit_tree(
        self,
        tree: Path,
        *,
        subject: str,
        metadata: Mapping[str, Any],
        timestamp: int,
        ref: str | None = None,
    ) -> str:
        """Commit the directory ``tree`` and return the commit checksum.

        The commit has no parent and takes its time from ``timestamp``, so the same tree and
        metadata always give the same checksum. File ownership, modes and xattrs are kept as they
        are on disk. With ``ref``, the ref is moved in the same transaction; on any error the
        repository is left as it was.
        """
        if ref is not None:
            _check_ref(ref)
        meta = GLib.Variant("a{sv}", {k: _variant(v) for k, v in sorted(metadata.items())})
        try:
            with self.transaction():
                mtree = OSTree.MutableTree.new()
                modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, None)
                self._repo.write_directory_to_mtree(
                    Gio.File.new_for_path(str(tree)), mtree, modifier, None
                )
                _, root = self._repo.write_mtree(mtree, None)
                _, checksum = self._repo.write_commit_with_time(
                    None, subject, None, meta, root, timestamp, None
                )
                if ref is not None:
                    self._repo.transaction_set_ref(None, ref, checksum)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot commit {tree}: {e.message}") from e
        return str(checksum)

    def pull_local(self, source: Repo, checksum: str) -> None:
        """Copy the commit ``checksum`` and every object it needs from the local repo ``source``.

        Objects already here are skipped, so pulling a commit that differs in a few files from
        one already present costs only those files. Refs are not touched.
        """
        options = GLib.Variant(
            "a{sv}",
            {
                "refs": GLib.Variant("as", [checksum]),
                "depth": GLib.Variant("i", 0),
            },
        )
        try:
            self._repo.pull_with_options(f"file://{source.path.resolve()}", options, None, None)
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot pull {checksum} from {source.path}: {e.message}"
            ) from e

    def pull_url(
        self,
        url: str,
        checksum: str,
        *,
        remote: str = "afield",
        proxy: str | None = None,
        network_retries: int = 5,
        progress: PullProgress | None = None,
    ) -> PullStats:
        """Pull exactly the commit ``checksum`` and the objects it needs from the repo at ``url``.

        ``url`` is an OSTree repository's base URL (``http(s)://``). libostree pulls over HTTP
        only through a remote, so the remote ``remote`` is added once (without GPG: the commit
        checksum is what the caller verified, e.g. against TUF) and ``url`` overrides its URL
        for this pull. No ref is read from the server: the commit is named by its checksum, and
        libostree verifies the commit object and every object it fetches against the checksums
        that name them. Objects already here are skipped; an interrupted pull leaves the commit
        marked partial and a later pull fetches only what is missing. Refs are not touched.
        ``proxy`` is an HTTP proxy URL for this pull (the device's metering relay);
        ``network_retries`` is how often libostree itself retries a failed object request.
        Static deltas on the server are not used: the device fetches those itself.
        ``progress`` gets the running totals while the pull runs (when libostree reports them).

        Raises:
            RepositoryError: the pull failed (unreachable server, missing or corrupt object);
                the message says which.
        """
        if not is_checksum(checksum):
            raise RepositoryError(f"{checksum!r} is not a commit checksum", user_error=True)
        options = GLib.Variant(
            "a{sv}",
            {
                "refs": GLib.Variant("as", [checksum]),
                "depth": GLib.Variant("i", 0),
                "override-url": GLib.Variant("s", url),
                "gpg-verify": GLib.Variant("b", False),
                "gpg-verify-summary": GLib.Variant("b", False),
                "disable-static-deltas": GLib.Variant("b", True),
                "n-network-retries": GLib.Variant("u", network_retries),
            },
        )
        settings = {"gpg-verify": "false", "gpg-verify-summary": "false"}
        if proxy is not None:
            settings["proxy"] = proxy
        remote_options = GLib.Variant(
            "a{sv}", {k: GLib.Variant("s", v) for k, v in settings.items()}
        )
        try:
            # REPLACE: the proxy (a local port) changes from one pull to the next.
            self._repo.remote_change(
                None, OSTree.RepoRemoteChange.REPLACE, remote, url, remote_options, None
            )
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot add remote {remote}: {e.message}", path=self.path
            ) from e
        status = OSTree.AsyncProgress.new()

        def stats() -> PullStats:
            return PullStats(
                bytes_transferred=int(status.get_uint64("bytes-transferred")),
                objects_fetched=int(status.get_uint("fetched")),
                objects_requested=int(status.get_uint("requested")),
            )

        if progress is not None:
            status.connect("changed", lambda _status: progress(stats()))
        try:
            self._repo.pull_with_options(remote, options, status, None)
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot pull {checksum} from {url}: {e.message}", path=self.path
            ) from e
        finally:
            status.finish()
        return stats()

    def commit_size(self, checksum: str) -> int:
        """Bytes of every object the commit needs, as stored here (a from-scratch pull's cost).

        Meaningful for archive repositories, whose objects are stored compressed as served.
        """
        try:
            _, reachable = self._repo.traverse_commit(checksum, 0, None)
        except GLib.Error as e:
            raise RepositoryError(f"{self.path}: cannot walk commit {checksum}: {e.message}") from e
        total = 0
        for name in reachable:
            object_checksum, object_type = OSTree.object_name_deserialize(name)
            kind = OSTree.object_type_to_string(object_type)
            suffix = "filez" if kind == "file" else kind  # archive mode compresses files
            path = self.path / "objects" / object_checksum[:2] / f"{object_checksum[2:]}.{suffix}"
            total += path.stat().st_size
        return total

    # -- static deltas ---------------------------------------------------------------------------

    def generate_delta(
        self, from_commit: str, to_commit: str, *, params: Mapping[str, bool | int | str]
    ) -> StaticDelta:
        """Generate the static delta ``from_commit`` -> ``to_commit`` into this repository.

        ``params`` are libostree's generation parameters, e.g. ``bsdiff-enabled`` (b),
        ``max-bsdiff-size``, ``min-fallback-size`` and ``max-chunk-size`` (MB, u),
        ``inline-parts`` (b). A delta already here is generated again (same result).

        Raises:
            RepositoryError: a commit is missing or libostree failed.
        """
        for checksum in (from_commit, to_commit):
            if not self.has_commit(checksum):
                raise RepositoryError(f"{self.path}: no commit {checksum}", user_error=True)
        types = {bool: "b", int: "u", str: "s"}
        variant = GLib.Variant(
            "a{sv}", {k: GLib.Variant(types[type(v)], v) for k, v in sorted(params.items())}
        )
        try:
            self._repo.static_delta_generate(
                OSTree.StaticDeltaGenerateOpt.MAJOR, from_commit, to_commit, None, variant, None
            )
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot generate the static delta {from_commit[:12]} -> "
                f"{to_commit[:12]}: {e.message}",
                path=self.path,
            ) from e
        return self.static_delta(from_commit, to_commit)

    def static_delta(self, from_commit: str, to_commit: str) -> StaticDelta:
        """Describe the delta ``from_commit`` -> ``to_commit`` already in this repository."""
        relative = static_delta_dir(from_commit, to_commit)
        directory = self.path / relative
        if not (directory / "superblock").is_file():
            raise RepositoryError(
                f"{self.path}: no static delta {from_commit[:12]} -> {to_commit[:12]}",
                path=self.path,
            )
        names = sorted(
            (p.name for p in directory.iterdir() if p.name.isdigit()), key=lambda n: int(n)
        )
        files = tuple(
            DeltaFile(name, (directory / name).stat().st_size, _sha256(directory / name))
            for name in ["superblock", *names]
        )
        return StaticDelta(from_commit, to_commit, relative, files)

    def apply_delta(self, directory: Path) -> None:
        """Apply the static delta whose superblock and parts are in ``directory`` (offline).

        The commit it leads to must have its parent commit's objects here, as any device
        running the delta's base has. libostree checks every part against the checksum the
        superblock lists and every object it writes against its name; on any error the
        transaction is aborted and the repository keeps only complete objects.

        Raises:
            RepositoryError: the files do not form a valid delta for this repository.
        """
        try:
            with self.transaction():
                self._repo.static_delta_execute_offline(
                    Gio.File.new_for_path(str(directory)), False, None
                )
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot apply the static delta in {directory}: {e.message}",
                path=self.path,
            ) from e

    def read_file(self, ref_or_checksum: str, path: str) -> bytes:
        """The content of the regular file ``path`` in a commit."""
        checksum = self.resolve(ref_or_checksum)
        try:
            _, root, _ = self._repo.read_commit(checksum, None)
            f = root.resolve_relative_path(path.lstrip("/"))
            stream = f.read(None)
            data = bytearray()
            while True:
                chunk = stream.read_bytes(1 << 16, None).get_data()
                if not chunk:
                    break
                data += chunk
            stream.close(None)
        except GLib.Error as e:
            raise RepositoryError(
                f"{self.path}: cannot read {path} in {checksum}: {e.message}"
            ) from e
        return bytes(data)


def _check_ref(ref: str) -> None:
    if not _REF.match(ref):
        raise RepositoryError(
            f"invalid ref {ref!r}: use path segments of letters, digits, '.', '_' or '-' "
            "separated by '/', e.g. afield/gateway/x86_64/stable",
            user_error=True,
        )
