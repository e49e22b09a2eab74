"""Getting packages onto the device: resumable HTTP downloads and a watched inbox folder.

``fetch`` writes ``NAME.part`` and resumes it with an HTTP Range request after a dropped
link (within one call, ``attempts`` times, and across calls). A resumed range is tied to
the first response's ETag or Last-Modified through ``If-Range``, so a file that changed on
the server restarts from zero instead of being spliced. The file is renamed to ``NAME``
only once its size and sha256 (given, or read from ``URL.sha256``) check out.

``QuietPackages`` lists the packages a writer has finished; ``settle`` files each one under
``done/`` or ``rejected/`` (with a ``.reason`` file) once it has been processed.

Errors: ``FetchFailed`` (exit 10) when the server cannot be read, ``PackageRejected``
(exit 3) when what arrived is wrong (checksum, size), ``UsageError`` for a bad URL or hash.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import requests

from orchestrator.core.journal import now_iso
from orchestrator.errors import FetchFailed, PackageRejected, UsageError
from orchestrator.store.atomic import fsync_dir, write_atomic
from orchestrator.store.metafile import sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
MAX_DOWNLOAD_BYTES = 16 << 30  # the unpacked limit in package.py; an archive is never bigger
PART_SUFFIX = ".part"
VALIDATOR_SUFFIX = ".part.validator"  # the ETag / Last-Modified a .part was downloaded under
SIDECAR_SUFFIX = ".sha256"
_CHUNK = 1 << 16  # a link dropped mid-read loses the chunk being read, so keep it small
_MAX_SIDECAR_BYTES = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")

INBOX_DONE, INBOX_REJECTED = "done", "rejected"
PACKAGE_SUFFIXES = (".tar.gz", ".tgz")
REASON_SUFFIX = ".reason"
DEFAULT_QUIET_S = 10.0


class _Interrupted(Exception):
    """A transfer that may succeed if tried again (dropped link, timeout, 5xx)."""


# --- download -----------------------------------------------------------------------------
def fetch(url: str, dest_dir: Path, expected_sha256: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
          max_bytes: int = MAX_DOWNLOAD_BYTES, *, attempts: int = 3, retry_delay_s: float = 1.0,
          name: str | None = None, session: requests.Session | None = None) -> Path:
    """Download ``url`` into ``dest_dir/<name>`` (default: the URL's last path segment), verified.

    ``timeout_s`` bounds connecting and every wait for data. Without ``expected_sha256`` the
    server's ``URL.sha256`` is used when it has one; otherwise only the size is checked.
    """
    name = name or _file_name(url)
    expected = _parse_sha256(expected_sha256, "--sha256") if expected_sha256 else None
    if timeout_s <= 0 or max_bytes <= 0 or attempts < 1:
        raise UsageError("timeout, size limit and attempts must be positive")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target, part = dest_dir / name, dest_dir / (name + PART_SUFFIX)
    http = session or requests.Session()
    try:
        def retried(step: Callable[[], T], what: str) -> T:
            for attempt in range(1, attempts + 1):
                try:
                    return step()
                except _Interrupted as exc:
                    if attempt == attempts:
                        kept = f"; {part.stat().st_size} bytes kept in {part} to resume" if part.exists() else ""
                        raise FetchFailed(url, f"{what}: {exc} (after {attempts} attempts){kept}") from None
                    log.warning("%s of %s interrupted (%s); attempt %d of %d", what, url, exc, attempt + 1, attempts)
                    time.sleep(retry_delay_s * attempt)
            raise AssertionError("unreachable")

        if expected is None:
            expected = retried(lambda: _sidecar_sha256(http, url, timeout_s), "reading " + url + SIDECAR_SUFFIX)
        if expected and target.is_file() and sha256_file(target) == expected:
            log.info("%s already holds %s; not downloading it again", target, url)
            return target
        retried(lambda: _download(http, url, part, timeout_s, max_bytes, can_resume=expected is not None),
                "transfer")
    finally:
        if session is None:
            http.close()
    _place(url, part, target, expected)
    return target


def _file_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{url!r} is not an http(s) URL")
    name = posixpath.basename(unquote(parts.path))
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UsageError(f"cannot tell a file name from {url!r}; the URL must end with the package's file name")
    return name


def _parse_sha256(text: str, source: str) -> str:
    digest = text.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise UsageError(f"{source} {text!r} is not a sha256 (64 hex digits)")
    return digest


def _describe(exc: requests.RequestException, timeout_s: float) -> str:
    # requests' own messages nest several reprs; one short phrase is what an operator needs.
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(exc):
        return "connection closed mid-transfer"
    return f"cannot connect ({type(exc).__name__})"


def _sidecar_sha256(http: requests.Session, url: str, timeout_s: float) -> str | None:
    sidecar = url + SIDECAR_SUFFIX
    try:
        with http.get(sidecar, stream=True, timeout=(timeout_s, timeout_s)) as response:
            if response.status_code >= 500:
                raise _Interrupted(f"HTTP {response.status_code}")
            if response.status_code != 200:  # 404, or 403 from stores that hide missing objects
                return None
            body = response.raw.read(_MAX_SIDECAR_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise _Interrupted(_describe(exc, timeout_s)) from exc
    tokens = body[:_MAX_SIDECAR_BYTES].decode("utf-8", "replace").split()
    if len(body) > _MAX_SIDECAR_BYTES or not tokens or not _SHA256.fullmatch(tokens[0].lower()):
        raise PackageRejected(url, f"{sidecar} does not hold a sha256")
    return tokens[0].lower()  # `sha256sum` writes "<digest>  <name>"


def _download(http: requests.Session, url: str, part: Path, timeout_s: float, max_bytes: int,
              can_resume: bool) -> None:
    validator_path = part.with_name(part.name.removesuffix(PART_SUFFIX) + VALIDATOR_SUFFIX)
    validator = validator_path.read_text().strip() if validator_path.is_file() else ""
    offset = part.stat().st_size if part.is_file() else 0
    # Identity encoding: byte ranges and Content-Length must count the file's bytes.
    headers = {"Accept-Encoding": "identity"}
    if offset and (validator or can_resume):
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    else:
        offset = 0
    try:
        with http.get(url, headers=headers, stream=True, timeout=(timeout_s, timeout_s)) as response:
            start, total = _accepted_range(url, response, offset, part)
            if total is not None and total > max_bytes:
                _discard(part, validator_path)
                raise PackageRejected(url, f"it is {total} bytes, over the limit of {max_bytes}")
            if start == total:
                return  # an earlier attempt already received every byte
            if start == 0:
                _remember_validator(response, validator_path)
            received = _write_body(url, response, part, start, max_bytes, validator_path)
    except requests.RequestException as exc:
        raise _Interrupted(_describe(exc, timeout_s)) from exc
    if total is not None and received != total:
        if received > total:
            _discard(part, validator_path)
            raise PackageRejected(url, f"server sent {received} bytes but announced {total}")
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def _accepted_range(url: str, response: requests.Response, offset: int, part: Path) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's full size (None when the server does not say)."""
    status = response.status_code
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)  # a range we did not ask for: start over next attempt
            raise _Interrupted(f"server answered with range {response.headers.get('Content-Range')!r}")
        return offset, None if match.group(3) == "*" else int(match.group(3))
    if status == 416:
        match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset:
            return offset, offset
        part.unlink(missing_ok=True)  # longer than the file now is: it changed, start over
        raise _Interrupted("the partial download does not fit the file on the server")
    if status == 200:  # a full body: the server ignored the range or the file changed (If-Range)
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    if status >= 500:
        raise _Interrupted(f"HTTP {status} {response.reason}")
    raise FetchFailed(url, f"HTTP {status} {response.reason}")


def _remember_validator(response: requests.Response, validator_path: Path) -> None:
    etag = response.headers.get("ETag", "")
    # A weak ETag may not be used in If-Range (RFC 9110 13.1.5); Last-Modified may.
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified", "")
    if validator:
        validator_path.write_text(validator + "\n")
    else:
        validator_path.unlink(missing_ok=True)


def _write_body(url: str, response: requests.Response, part: Path, start: int, max_bytes: int,
                validator_path: Path) -> int:
    """Append the body to ``part`` (truncated first when ``start`` is 0); the file's size afterwards."""
    size = start
    with part.open("ab" if start else "wb") as handle:
        try:
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    break
                handle.write(chunk)
        finally:
            handle.flush()
            os.fsync(handle.fileno())  # what was received survives a power cut and is resumed
    if size > max_bytes:
        _discard(part, validator_path)
        raise PackageRejected(url, f"it is more than the limit of {max_bytes} bytes")
    return size


def _discard(part: Path, validator_path: Path) -> None:
    part.unlink(missing_ok=True)
    validator_path.unlink(missing_ok=True)


def _place(url: str, part: Path, target: Path, expected: str | None) -> None:
    validator_path = part.with_name(target.name + VALIDATOR_SUFFIX)
    if expected is not None:
        actual = sha256_file(part)
        if actual != expected:
            _discard(part, validator_path)
            raise PackageRejected(url, f"sha256 {actual[:12]}… does not match the expected {expected[:12]}…")
    else:
        log.info("%s has no sha256 to check against; its meta.yaml and signature are all that vouch for it", url)
    os.replace(part, target)
    validator_path.unlink(missing_ok=True)
    fsync_dir(target.parent)


# --- inbox --------------------------------------------------------------------------------
class QuietPackages:
    """The inbox's packages whose writer has finished, oldest first.

    A package is a regular file (not a link) named ``*.tar.gz`` or ``*.tgz``, not hidden, whose size and
    mtime have not changed for ``quiet_s`` seconds of a monotonic clock, counted from when this object
    first saw them so: a wall-clock jump neither files a half-written package (a jump forward) nor
    holds a finished one back forever (a jump back). Writers' ``.part``/``.tmp`` files never match.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seen: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> ((size, mtime_ns), unchanged since)

    def ready(self, inbox_dir: Path, quiet_s: float = DEFAULT_QUIET_S) -> list[Path]:
        if not inbox_dir.is_dir():
            self.seen = {}
            return []
        now = self.clock()
        current: dict[Path, tuple[tuple[int, int], float]] = {}
        ready: list[tuple[float, str, Path]] = []
        for path in inbox_dir.iterdir():
            if path.name.startswith(".") or not path.name.endswith(PACKAGE_SUFFIXES):
                continue
            try:
                info = path.lstat()
            except FileNotFoundError:  # settled by someone else meanwhile
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            key = (info.st_size, info.st_mtime_ns)
            before = self.seen.get(path)
            since = before[1] if before is not None and before[0] == key else now
            current[path] = (key, since)
            if now - since >= quiet_s:
                ready.append((since, path.name, path))
        self.seen = current
        return [path for _, _, path in sorted(ready)]


def settle(path: Path, ok: bool, reason: str = "") -> Path:
    """Move a processed package to ``done/`` or ``rejected/`` beside it; a rejected one gets a ``.reason`` file."""
    folder = path.parent / (INBOX_DONE if ok else INBOX_REJECTED)
    folder.mkdir(exist_ok=True)
    target = _free_name(folder, path.name)
    os.rename(path, target)
    if reason or not ok:
        line = " ".join((reason or "no reason given").split())
        write_atomic(target.with_name(target.name + REASON_SUFFIX),
                     f"{now_iso()} {'filed' if ok else 'rejected'}: {line}\n")
    fsync_dir(folder)
    fsync_dir(path.parent)
    return target


def _free_name(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or ``stem-N.suffix`` when an earlier package of that name was settled there."""
    suffix = next((s for s in PACKAGE_SUFFIXES if name.endswith(s)), "")
    stem = name.removesuffix(suffix) if suffix else name
    candidate, n = folder / name, 0
    while candidate.exists() or candidate.with_name(candidate.name + REASON_SUFFIX).exists():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate
