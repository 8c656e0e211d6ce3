"""Where tables live: parsing and comparing locations, storage options, deleting a prefix.

Everything that touches storage *outside* the Delta protocol is here (listing a
staging prefix, writing the completion marker, deleting objects); reading and
writing the tables themselves is the delta package's job. obstore shares delta-rs's
`object_store` crate, so the same storage options and environment variables
(AWS_*, AZURE_*, GOOGLE_*) serve both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog

from . import failpoints
from .contract import ALLOWED_PREFIXES_ENV, COMPLETION_MARKER, STORAGE_OPTIONS_ENV
from .errors import InvalidInputError, StorageError
from .redact import is_secret_name, redact_options, scrub, strip_userinfo
from .storeoptions import parse_duration, split_store_options

# where they were first defined
__all__ = ["is_secret_name", "parse_duration", "redact_options", "scrub", "split_store_options"]

# URI scheme -> store kind. `kind` is what nesting and safety checks compare.
_SCHEMES = {
    "file": "file",
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
}
SUPPORTED_SCHEMES = "a local path, file://, s3://, s3a://, gs://, az://, abfs:// or abfss://"

DELTA_LOG = "_delta_log"


@dataclass(frozen=True)
class Location:
    """A table location: a local directory or an object-store prefix.

    `container` is the bucket (s3, gs) or `[account/]container` (az), empty for
    local paths; `path` has no leading or trailing slash for object stores and is
    absolute for local paths.
    """

    kind: str
    container: str
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return self.kind == "file"

    def contains(self, other: Location) -> bool:
        """True when `other` is this location or lies inside it."""
        if self.kind != other.kind or not _same_container(self.container, other.container):
            return False
        if self.is_local:
            return other.path == self.path or other.path.startswith(self.path.rstrip("/") + "/")
        return self.path == "" or other.path == self.path or other.path.startswith(self.path + "/")

    def overlaps(self, other: Location) -> bool:
        return self.contains(other) or other.contains(self)

    @property
    def url(self) -> str:
        """The location as delta-rs and obstore take it: a URL, its path percent-encoded
        (they decode it once), so a `%` in a local path or a key is that character."""
        if self.is_local:
            return Path(self.path).as_uri()
        if not self.path:
            return self.uri
        return self.uri[: len(self.uri) - len(self.path)] + quote(self.path, safe=_PCHARS)

    def __str__(self) -> str:
        return self.uri


_PCHARS = "/=:@!$&'()*+,;-._~"  # RFC 3986 path characters left as they are


def _same_container(a: str, b: str) -> bool:
    # az://container/... names no account while abfss://container@account... does:
    # compare the container names when only one side knows the account.
    if a == b:
        return True
    return a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1] and ("/" not in a or "/" not in b)


def parse_location(text: str) -> Location:
    """Parse a table URI or local path; raise InvalidInputError when it can't be used."""
    raw = text.strip()
    if not raw:
        raise InvalidInputError("empty table location")
    if "://" not in raw:
        return _local(Path(raw))
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise InvalidInputError(
            f"unsupported URI scheme {scheme!r} in {_redact_uri(raw)}; use {SUPPORTED_SCHEMES}"
        )
    if parts.query or parts.fragment:
        raise InvalidInputError(
            f"{_redact_uri(raw)}: query strings are not allowed in table URIs;"
            " pass credentials as --storage-option or environment variables"
        )
    if kind == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(f"{_redact_uri(raw)}: file:// URIs must not name a host")
        return _local(Path(unquote(parts.path)))
    if not parts.netloc:
        raise InvalidInputError(f"{_redact_uri(raw)}: the URI names no bucket or container")
    if "@" in parts.netloc and kind != "az":
        raise InvalidInputError(f"{_redact_uri(raw)}: credentials in URIs are not allowed")
    container = parts.netloc
    if kind == "az" and "@" in parts.netloc:
        name, host = parts.netloc.split("@", 1)
        if ":" in name:
            raise InvalidInputError(
                f"{_redact_uri(raw)}: a password in the URI is not allowed; pass the key as"
                " --storage-option azure_storage_account_key=... or AZURE_STORAGE_ACCOUNT_KEY"
            )
        # DNS names and Azure container names are case-insensitive (containers are lower
        # case by Azure's rules), whichever host (blob or dfs) names the account
        container = f"{host.split('.', 1)[0].lower()}/{name.lower()}"
    elif kind == "az":
        container = container.lower()
    path = _clean_key(unquote(parts.path), raw)
    _refuse_percent(path, _redact_uri(raw))
    uri = f"{scheme}://{parts.netloc}/{path}" if path else f"{scheme}://{parts.netloc}"
    return Location(kind, container, path, uri)


def _local(path: Path) -> Location:
    resolved = path.expanduser().resolve()
    _refuse_percent(str(resolved), str(resolved))
    return Location("file", "", str(resolved), str(resolved))


def _refuse_percent(path: str, shown: str) -> None:
    """delta-rs (1.x) percent-decodes a table's path a second time when it reads the log
    (`run%41` is read as `runA`, however the URL is encoded), so a `%` in a path would
    make it read or write another folder: refused until it can be addressed."""
    if "%" in path:
        raise InvalidInputError(
            f"{shown}: a '%' in a table path cannot be used (delta-rs decodes table paths"
            " twice, so it would read or write another folder); rename the folder"
        )


def _clean_key(path: str, raw: str) -> str:
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InvalidInputError(f"{_redact_uri(raw)}: '..' is not allowed in object-store URIs")
    return "/".join(segments)


def _redact_uri(raw: str) -> str:
    parts = urlsplit(raw)
    return strip_userinfo(f"{parts.scheme}://{parts.netloc}{parts.path}") + (
        "?***" if parts.query or parts.fragment else ""
    )


# --- storage options ------------------------------------------------------------


def parse_storage_options(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings from the command line into a dict (later ones win)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(
                f"--storage-option needs KEY=VALUE, got {redact_option_text(pair)!r}"
            )
        options[key.strip()] = value
    return options


def options_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """STAGINGMERGE_STORAGE_OPTIONS: a JSON object of storage options (how the operator
    hands a Job its non-secret options, keeping them off the command line)."""
    raw = environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInputError(f"{STORAGE_OPTIONS_ENV} is not a JSON object") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInputError(f"{STORAGE_OPTIONS_ENV} must map strings to strings")
    return value


def redact_option_text(pair: str) -> str:
    key = pair.partition("=")[0]
    return f"{key}=***" if "=" in pair else "***"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BACKTRACE = re.compile(r"\s*\b0: <unknown>|\s*stack backtrace:")


def one_line(message: str, limit: int = 600) -> str:
    """Rust errors arrive as indented cause chains (and obstore's with a debug dump):
    fold the chain into one line, `outer: cause: root cause`."""
    text = _ANSI.sub("", message).split("Debug source:", 1)[0]
    text = _BACKTRACE.split(text, maxsplit=1)[0]  # a Rust backtrace, frame by frame
    parts = [line.strip().lstrip("↳").strip() for line in text.splitlines()]
    folded = ": ".join(p for p in parts if p)
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


# --- safety ---------------------------------------------------------------------


def allowed_prefixes(environ: Mapping[str, str] = os.environ) -> list[Location]:
    raw = environ.get(ALLOWED_PREFIXES_ENV, "")
    return [parse_location(p) for p in raw.split(",") if p.strip()]


def check_deletable(staging: Location, main: Location, allowed: Sequence[Location]) -> None:
    """Refuse to delete a bucket or container root, anything holding main, or a prefix
    outside the allow-list."""
    if not staging.is_local and staging.path == "":
        raise InvalidInputError(
            f"refusing to delete {staging}: it is a bucket/container root;"
            " point staging at a prefix"
        )
    if staging.is_local and Path(staging.path).parent == Path(staging.path):
        raise InvalidInputError(f"refusing to delete {staging}: it is a file system root")
    if staging.overlaps(main):
        raise InvalidInputError(
            f"staging {staging} and main {main} are the same location or one is inside the other"
        )
    if allowed and not any(prefix.contains(staging) for prefix in allowed):
        listed = ", ".join(str(p) for p in allowed)
        raise InvalidInputError(
            f"refusing to delete {staging}: it is outside {ALLOWED_PREFIXES_ENV} ({listed})"
        )


# --- the staging prefix as objects ------------------------------------------------


@dataclass(frozen=True)
class PrefixState:
    exists: bool
    has_delta_log: bool
    marker: dict[str, Any] | None


class Prefix:
    """Objects under one location, through obstore (local directories included)."""

    def __init__(self, location: Location, options: Mapping[str, str]) -> None:
        self.location = location
        self._options = dict(options)
        self._store: Any = None

    def _open(self) -> Any:
        if self._store is None:
            from obstore.store import from_url as obstore_from_url

            # typed per store kind in obstore; the options here are plain strings
            from_url: Any = obstore_from_url
            try:
                if self.location.is_local:
                    self._store = from_url(
                        Path(self.location.path).as_uri(), automatic_cleanup=True
                    )
                else:
                    config, client, retry = split_store_options(self._options)
                    client = _with_allow_http_from_env(client, self.location.kind, self._options)
                    self._store = from_url(
                        self.location.url,
                        config=config or None,
                        client_options=client or None,
                        retry_config=retry,
                    )
            except Exception as exc:
                raise _store_error(exc, self.location, self._options, "open") from exc
        return self._store

    def read_range(self, relative: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` of the object at `relative` under this location."""
        import obstore

        try:
            return bytes(obstore.get_range(self._open(), relative, start=start, length=length))
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "read") from exc

    def state(self) -> PrefixState:
        if self.location.is_local:
            path = Path(self.location.path)
            if path.is_file():
                raise InvalidInputError(f"{path} is a file, not a table directory")
            if not path.is_dir() or not any(path.iterdir()):
                return PrefixState(exists=False, has_delta_log=False, marker=None)
            log_dir = path / DELTA_LOG
            has_log = log_dir.is_dir() and any(log_dir.iterdir())
            return PrefixState(exists=True, has_delta_log=has_log, marker=self._read_marker())
        import obstore

        store = self._open()
        try:
            first = next(iter(obstore.list(store, chunk_size=1)), [])
            if not first:
                return PrefixState(exists=False, has_delta_log=False, marker=None)
            log = next(iter(obstore.list(store, prefix=DELTA_LOG + "/", chunk_size=1)), [])
            marker = self._read_marker()
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "list") from exc
        return PrefixState(exists=True, has_delta_log=bool(log), marker=marker)

    def _read_marker(self) -> dict[str, Any] | None:
        raw = self.read(COMPLETION_MARKER)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def write_marker(self, content: Mapping[str, Any]) -> None:
        self.put(COMPLETION_MARKER, json.dumps(dict(content)).encode())

    def read(self, relative: str) -> bytes | None:
        """The object at `relative` under this location, or None when there is none."""
        import obstore

        try:
            return bytes(obstore.get(self._open(), relative).bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "read") from exc

    def list(self, relative: str, after: str | None = None) -> list[tuple[str, int]]:
        """(path relative to `relative`, size) of every object under the folder `relative`
        (read as delta-rs reads: through symbolic links on a local disk); only those whose
        path sorts after `after` (relative to this location), when given."""
        import obstore

        folder = relative.rstrip("/") + "/"
        try:
            found = []
            listing = obstore.list(self._open(), prefix=folder, offset=after, chunk_size=1000)
            for chunk in listing:
                for meta in chunk:
                    found.append((str(meta["path"])[len(folder) :], int(meta["size"])))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "list") from exc
        return found

    def put(self, relative: str, data: bytes) -> None:
        import obstore

        try:
            obstore.put(self._open(), relative, data)
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "write to") from exc

    def delete(self, relative: str) -> None:
        """Delete the object at `relative`; nothing there is fine."""
        import obstore

        try:
            obstore.delete(self._open(), relative)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "delete") from exc

    def create(self, relative: str, data: bytes) -> bool:
        """Write `data` at `relative` only if nothing is there (atomic: a conditional put on
        object stores, a no-clobber create locally). False when something already was."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            obstore.put(self._open(), relative, data, mode="create")
        except AlreadyExistsError:
            return False
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "write to") from exc
        return True

    def delete_if_not_a_table(self) -> None:
        """Remove what a failed first write left (data files, no log), so the location
        reads as missing again instead of as "files but no _delta_log/"."""
        state = self.state()
        if not state.exists and self.location.is_local:
            _remove_empty_dirs(Path(self.location.path))  # a folder the failed create made
        elif state.exists and not state.has_delta_log:
            deleted = self.delete_all()
            if deleted:
                structlog.get_logger("stagingmerge.merge").info(
                    "removed the files of a create that failed",
                    location=str(self.location),
                    objects=deleted,
                )

    def delete_all(self, page_size: int = 1000) -> int:
        """Delete every object under the prefix: the Delta log first, the marker last.

        Deleting `_delta_log/` first means a half-deleted staging is never mistaken
        for a table still to merge; the marker, deleted last, tells a rerun that
        the merge finished and only the clean-up is left. Returns objects deleted.
        """
        if self.location.is_local:
            try:
                return _delete_local(Path(self.location.path))
            except OSError as exc:
                raise _store_error(exc, self.location, self._options, "delete") from exc
        import obstore

        store = self._open()
        deleted = 0
        try:
            for prefix in (DELTA_LOG + "/", None):
                for page in _pages(obstore.list(store, prefix=prefix, chunk_size=page_size)):
                    paths = [p for p in page if p != COMPLETION_MARKER]
                    if paths:
                        _delete_gone_or_not(store, paths)
                        deleted += len(paths)
                if prefix:
                    failpoints.hit("staging-delete")  # tests only: crash half-way
            try:
                obstore.delete(store, COMPLETION_MARKER)
                deleted += 1
            except FileNotFoundError:
                pass
        except Exception as exc:
            raise _store_error(exc, self.location, self._options, "delete") from exc
        return deleted


def _with_allow_http_from_env(
    client: dict[str, Any], kind: str, options: Mapping[str, str]
) -> dict[str, Any]:
    """obstore reads `AWS_ALLOW_HTTP` (and its GCS/Azure siblings) from the environment
    only when no client option is given: one option (`timeout=2s`) then made every
    request to an http endpoint fail with "builder error". The environment's value is
    kept unless the options set their own."""
    if not client or "allow_http" in client:
        return client
    names = {"s3": "AWS_ALLOW_HTTP", "gs": "GOOGLE_ALLOW_HTTP", "az": "AZURE_ALLOW_HTTP"}
    value = os.environ.get(names.get(kind, ""), "") or os.environ.get("ALLOW_HTTP", "")
    if not value and kind == "gs" and _gcs_base_url(options).startswith("http://"):
        value = "true"  # an emulator named by the service account, as GCS reads it
    return {**client, "allow_http": value} if value else client


def _gcs_base_url(options: Mapping[str, str]) -> str:
    """The `gcs_base_url` of the service-account file GCS is given (empty: none)."""
    named = {k.lower(): v for k, v in options.items()}
    path = (
        named.get("google_service_account")
        or named.get("service_account")
        or os.environ.get("GOOGLE_SERVICE_ACCOUNT", "")
    )
    try:
        value = json.loads(Path(path).read_text()).get("gcs_base_url", "") if path else ""
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _delete_gone_or_not(store: Any, paths: list[str]) -> None:
    """Delete `paths`, one already gone being fine: the retry of a DELETE the store applied
    but whose answer was lost finds nothing (Azure's batch and GCS then fail the call,
    S3's bulk delete does not), as does a second run finishing the same deletion."""
    import obstore

    try:
        obstore.delete(store, paths)
    except FileNotFoundError:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                obstore.delete(store, path)


_NO_FOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _delete_local(root: Path) -> int:
    """`delete_all` on a local disk, by hand rather than through obstore (which follows
    symbolic links: a link in staging to main would delete main's files). Links are
    removed as links and never descended; directories are opened relative to their
    parent with O_NOFOLLOW, so a directory swapped for a link meanwhile is refused, not
    followed. Same order: `_delta_log/` first, the marker last. Returns files removed."""
    try:
        top = os.open(root, _NO_FOLLOW_DIR)
    except FileNotFoundError:
        return 0
    try:
        names = os.listdir(top)  # noqa: PTH208 (an fd: pathlib cannot list one)
        deleted = _remove(top, DELTA_LOG) if DELTA_LOG in names else 0
        failpoints.hit("staging-delete")  # tests only: crash half-way
        for name in names:
            if name not in (DELTA_LOG, COMPLETION_MARKER):
                deleted += _remove(top, name)
        if COMPLETION_MARKER in names:
            deleted += _remove(top, COMPLETION_MARKER)
    finally:
        os.close(top)
    with contextlib.suppress(OSError):  # not empty: somebody wrote here meanwhile
        root.rmdir()
    return deleted


def _remove(parent: int, name: str) -> int:
    """Remove `name` (in the directory open as `parent`) and, for a real directory, all it
    holds; returns the files and links removed. Something already gone counts as done."""
    try:
        info = os.lstat(name, dir_fd=parent)
        if not stat.S_ISDIR(info.st_mode):  # a file, or a link (to anything): unlinked
            os.unlink(name, dir_fd=parent)
            return 1
        folder = os.open(name, _NO_FOLLOW_DIR, dir_fd=parent)
        removed, failed = 0, None
        try:
            for entry in os.listdir(folder):  # noqa: PTH208 (an fd)
                try:
                    removed += _remove(folder, entry)
                except OSError as exc:  # the rest still goes: a rerun has less to do
                    failed = failed or exc
        finally:
            os.close(folder)
        if failed:
            raise failed
        os.rmdir(name, dir_fd=parent)
        return removed
    except FileNotFoundError:
        return 0


def links_reaching(root: Location, other: Location) -> list[tuple[str, str]]:
    """(link, target) for every symbolic link under the local directory `root` whose
    target lies in `other` or holds it (a link to main, to its parent, to `/`): read
    through such a link, staging would be main's own files. Links are not followed."""
    if not root.is_local or not other.is_local or not Path(root.path).is_dir():
        return []
    found = []
    for folder, dirs, files in os.walk(root.path, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            target = str(path.resolve())
            if path.is_symlink() and Location("file", "", target, target).overlaps(other):
                found.append((str(path.relative_to(root.path)), str(path.resolve())))
    return sorted(found)


def _pages(listing: Iterable[Sequence[Any]]) -> Iterator[list[str]]:
    for chunk in listing:
        yield [str(meta["path"]) for meta in chunk]


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda e: -len(e[0])):
        with contextlib.suppress(OSError):  # not empty: somebody wrote here; leave it be
            Path(dirpath).rmdir()


def _store_error(
    exc: Exception, location: Location, options: Mapping[str, str], action: str
) -> Exception:
    text = scrub(one_line(str(exc)), options)
    name = type(exc).__name__
    if name in ("PermissionDeniedError", "UnauthenticatedError") or looks_like_auth_error(text):
        return InvalidInputError(
            f"cannot {action} {location}: the store refused the credentials ({text})"
        )
    if name == "UnknownConfigurationKeyError":
        return InvalidInputError(f"cannot {action} {location}: {text}")
    return StorageError(f"cannot {action} {location}: {text}")


# Answers that mean "these credentials will not do" (retrying cannot help). Status codes
# are matched with their words: a bare "403" also occurs in paths, UUIDs and timings.
_AUTH_ERROR = re.compile(
    r"status:? 40[13]\b|\b40[13] (forbidden|unauthorized)|invalidaccesskeyid|"
    r"signaturedoesnotmatch|accessdenied|authenticationfailed|authorizationfailure|"
    r"expiredtoken|invalidtoken|unauthenticated|permission ?denied",
    re.IGNORECASE,
)


def looks_like_auth_error(text: str) -> bool:
    return _AUTH_ERROR.search(text) is not None
