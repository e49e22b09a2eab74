"""Downloads against a local HTTP server with Range support, and the inbox; traffic only to 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
import requests
from click.testing import CliRunner

from orchestrator.cli.main import State
from orchestrator.cli.trust import register
from orchestrator.delivery.fetch import QuietPackages, fetch, settle
from orchestrator.errors import FetchFailed, PackageRejected, UsageError
from orchestrator.sample import Variant, write_sample_package
from tests.conftest import classifier_only

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    """What the test server serves, and how it misbehaves (each fault is used once)."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the link drops
    stall_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before it goes silent
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def ranges(self, path: str) -> list[str | None]:
        return [headers.get("Range") for seen, headers in self.seen if seen == path]


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``Site.files`` with single open-ended byte ranges and If-Range on a strong ETag."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        site.seen.append((self.path, dict(self.headers)))
        data = site.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and self.headers.get("If-Range", etag) == etag:
            start, status = int(wanted.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self._send(site, body)

    def _send(self, site: Site, body: bytes) -> None:
        if self.path in site.drop_after:
            self.wfile.write(body[:site.drop_after.pop(self.path)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif self.path in site.stall_after:
            self.wfile.write(body[:site.stall_after.pop(self.path)])
            self.wfile.flush()
            site.release.wait(10)
            self.close_connection = True
        else:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up on purpose (a refused download) is expected; anything else is a bug here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    state = Site()
    server = Server(("127.0.0.1", 0), RangeHandler)
    server.site = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not see loopback test traffic
    yield session
    session.close()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_full_download_is_verified_and_renamed_into_place(site: tuple[Site, str], http: requests.Session,
                                                          tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    path = fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, session=http)
    assert path == tmp_path / "pkg.tar.gz" and path.read_bytes() == PAYLOAD
    assert listing(tmp_path) == ["pkg.tar.gz"]
    assert state.ranges("/pkg.tar.gz") == [None]
    # Fetching again finds the verified file and transfers nothing.
    assert fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, session=http) == path
    assert state.ranges("/pkg.tar.gz") == [None]


def test_interrupted_download_resumes_on_the_next_fetch(site: tuple[Site, str], http: requests.Session,
                                                        tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    state.drop_after["/pkg.tar.gz"] = 100_000
    with pytest.raises(FetchFailed, match=r"connection closed mid-transfer .*bytes kept in .*pkg\.tar\.gz\.part"):
        fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, attempts=1, session=http)
    kept = (tmp_path / "pkg.tar.gz.part").stat().st_size
    assert 0 < kept <= 100_000
    assert not (tmp_path / "pkg.tar.gz").exists()

    path = fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, attempts=1, session=http)
    assert path.read_bytes() == PAYLOAD
    assert state.ranges("/pkg.tar.gz") == [None, f"bytes={kept}-"]
    assert listing(tmp_path) == ["pkg.tar.gz"]


def test_a_dropped_link_is_resumed_within_one_fetch(site: tuple[Site, str], http: requests.Session,
                                                    tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    # The chunk being read when the link drops is lost (at most 64 KiB); what came before is resumed from.
    state.drop_after["/pkg.tar.gz"] = 150_000
    path = fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, attempts=2, retry_delay_s=0, session=http)
    assert path.read_bytes() == PAYLOAD
    first, second = state.ranges("/pkg.tar.gz")
    assert first is None and second is not None and 64 * 1024 <= int(second[6:-1]) <= 150_000


def test_a_stalled_transfer_times_out_and_resumes(site: tuple[Site, str], http: requests.Session,
                                                  tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    state.stall_after["/pkg.tar.gz"] = 70_000
    started = time.monotonic()
    path = fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=0.5, attempts=2, retry_delay_s=0, session=http)
    assert time.monotonic() - started < 5
    assert path.read_bytes() == PAYLOAD
    assert state.ranges("/pkg.tar.gz")[1] is not None


def test_a_file_changed_on_the_server_restarts_instead_of_splicing(site: tuple[Site, str], http: requests.Session,
                                                                   tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    state.drop_after["/pkg.tar.gz"] = 100_000
    with pytest.raises(FetchFailed):
        fetch(f"{base}/pkg.tar.gz", tmp_path, timeout_s=5, attempts=1, session=http)
    changed = os.urandom(200_000)
    state.files["/pkg.tar.gz"] = changed
    # No sha256 to catch a splice: the If-Range validator makes the server send the whole new file.
    path = fetch(f"{base}/pkg.tar.gz", tmp_path, timeout_s=5, attempts=1, session=http)
    assert path.read_bytes() == changed
    assert [h.get("If-Range") is not None for p, h in state.seen if p == "/pkg.tar.gz"] == [False, True]


def test_sha256_mismatch_is_refused_and_leaves_nothing(site: tuple[Site, str], http: requests.Session,
                                                       tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    with pytest.raises(PackageRejected, match=r"sha256 [0-9a-f]{12}… does not match the expected 000000000000…"):
        fetch(f"{base}/pkg.tar.gz", tmp_path, "0" * 64, timeout_s=5, session=http)
    assert listing(tmp_path) == []


def test_sidecar_sha256_is_used_when_none_is_given(site: tuple[Site, str], http: requests.Session,
                                                   tmp_path: Path) -> None:
    state, base = site
    state.files["/good.tar.gz"] = PAYLOAD
    state.files["/good.tar.gz.sha256"] = f"{DIGEST.upper()}  good.tar.gz\n".encode()
    assert fetch(f"{base}/good.tar.gz", tmp_path, timeout_s=5, session=http).read_bytes() == PAYLOAD
    assert state.ranges("/good.tar.gz.sha256") == [None]

    state.files["/bad.tar.gz"] = PAYLOAD
    state.files["/bad.tar.gz.sha256"] = ("1" * 64).encode()
    with pytest.raises(PackageRejected, match="does not match the expected 111111111111"):
        fetch(f"{base}/bad.tar.gz", tmp_path, timeout_s=5, session=http)
    state.files["/junk.tar.gz"] = PAYLOAD
    state.files["/junk.tar.gz.sha256"] = b"<html>not found</html>"
    with pytest.raises(PackageRejected, match=r"junk\.tar\.gz\.sha256 does not hold a sha256"):
        fetch(f"{base}/junk.tar.gz", tmp_path, timeout_s=5, session=http)
    assert listing(tmp_path) == ["good.tar.gz"]


def test_without_a_sidecar_the_file_is_fetched_unchecked(site: tuple[Site, str], http: requests.Session,
                                                         tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    assert fetch(f"{base}/pkg.tar.gz", tmp_path, timeout_s=5, session=http).read_bytes() == PAYLOAD
    assert [p for p, _ in state.seen] == ["/pkg.tar.gz.sha256", "/pkg.tar.gz"]


def test_a_server_that_never_answers_times_out_quickly(http: requests.Session, tmp_path: Path) -> None:
    # Listening but never accepting: the connection opens, the answer never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/pkg.tar.gz"
        started = time.monotonic()
        with pytest.raises(FetchFailed, match=r"no answer within 0\.5 s \(after 2 attempts\)") as caught:
            fetch(url, tmp_path, DIGEST, timeout_s=0.5, attempts=2, retry_delay_s=0, session=http)
        assert time.monotonic() - started < 5
        with pytest.raises(FetchFailed, match=r"reading .*pkg\.tar\.gz\.sha256: no answer within 0\.5 s"):
            fetch(url, tmp_path, timeout_s=0.5, attempts=1, session=http)
    assert caught.value.exit_code == 10
    assert listing(tmp_path) == []


def test_refusals_before_any_byte_is_kept(site: tuple[Site, str], http: requests.Session, tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    with pytest.raises(PackageRejected, match="it is 300000 bytes, over the limit of 1000"):
        fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, max_bytes=1000, session=http)
    with pytest.raises(FetchFailed, match="HTTP 404"):
        fetch(f"{base}/missing.tar.gz", tmp_path, DIGEST, timeout_s=5, session=http)
    with pytest.raises(UsageError, match="not an http"):
        fetch("file:///etc/passwd", tmp_path, DIGEST)
    with pytest.raises(UsageError, match="cannot tell a file name"):
        fetch(f"{base}/", tmp_path, DIGEST)
    with pytest.raises(UsageError, match="is not a sha256"):
        fetch(f"{base}/pkg.tar.gz", tmp_path, "abc")
    assert listing(tmp_path) == []


def _aged(path: Path, content: bytes, age_s: float, now: float) -> Path:
    path.write_bytes(content)
    os.utime(path, (now - age_s, now - age_s))
    return path


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quiet_packages_lists_only_finished_packages_oldest_first(tmp_path: Path) -> None:
    now = time.time()
    clock = _Clock()
    quiet = QuietPackages(clock)
    older = _aged(tmp_path / "b.tgz", b"x", 300, now)
    for name in ("d.tar.gz.part", "e.tar.gz.tmp", ".f.tar.gz", "notes.txt"):
        _aged(tmp_path / name, b"x", 600, now)
    (tmp_path / "folder.tar.gz").mkdir()
    (tmp_path / "done").mkdir()
    _aged(tmp_path / "done" / "g.tar.gz", b"x", 600, now)
    assert quiet.ready(tmp_path, quiet_s=10) == []  # first sight: its writer may still be at it
    clock.now += 5
    old = _aged(tmp_path / "a.tar.gz", b"x", 120, now)
    (tmp_path / "link.tar.gz").symlink_to(old)
    assert quiet.ready(tmp_path, quiet_s=10) == []
    clock.now += 5
    assert quiet.ready(tmp_path, quiet_s=10) == [older]
    clock.now += 5
    assert quiet.ready(tmp_path, quiet_s=10) == [older, old]
    assert quiet.ready(tmp_path / "absent") == []


def test_a_package_still_growing_is_not_ready_whatever_the_wall_clock_says(tmp_path: Path) -> None:
    clock = _Clock()
    quiet = QuietPackages(clock)
    growing = _aged(tmp_path / "a.tar.gz", b"x", 3600, time.time())  # mtime an hour back: a clock jumped forward
    assert quiet.ready(tmp_path, quiet_s=10) == []
    clock.now += 8
    with growing.open("ab") as handle:
        handle.write(b"more")
    clock.now += 8
    assert quiet.ready(tmp_path, quiet_s=10) == []  # it changed: its quiet period starts again
    clock.now += 10
    assert quiet.ready(tmp_path, quiet_s=10) == [growing]


def test_a_package_with_an_mtime_in_the_future_is_filed_once_quiet(tmp_path: Path) -> None:
    clock = _Clock()
    quiet = QuietPackages(clock)
    ahead = _aged(tmp_path / "a.tar.gz", b"x", -86400, time.time())  # the wall clock jumped back a day
    assert quiet.ready(tmp_path, quiet_s=10) == []
    clock.now += 10
    assert quiet.ready(tmp_path, quiet_s=10) == [ahead]


def test_settle_files_packages_under_done_and_rejected(tmp_path: Path) -> None:
    good = _aged(tmp_path / "a.tar.gz", b"a", 60, time.time())
    moved = settle(good, ok=True)
    assert moved == tmp_path / "done" / "a.tar.gz" and moved.read_bytes() == b"a"
    assert listing(tmp_path / "done") == ["a.tar.gz"]

    for content in (b"1", b"2"):
        (tmp_path / "b.tar.gz").write_bytes(content)
        settle(tmp_path / "b.tar.gz", ok=False, reason="package b.tar.gz refused: sha256\nmismatch")
    rejected = tmp_path / "rejected"
    assert listing(rejected) == ["b-1.tar.gz", "b-1.tar.gz.reason", "b.tar.gz", "b.tar.gz.reason"]
    assert (rejected / "b.tar.gz").read_bytes() == b"1" and (rejected / "b-1.tar.gz").read_bytes() == b"2"
    reason = (rejected / "b.tar.gz.reason").read_text()
    assert reason.endswith(" rejected: package b.tar.gz refused: sha256 mismatch\n")
    assert QuietPackages().ready(tmp_path, quiet_s=0) == []


def test_a_complete_part_left_by_a_crash_is_verified_without_a_transfer(site: tuple[Site, str],
                                                                        http: requests.Session,
                                                                        tmp_path: Path) -> None:
    state, base = site
    state.files["/pkg.tar.gz"] = PAYLOAD
    (tmp_path / "pkg.tar.gz.part").write_bytes(PAYLOAD)
    path = fetch(f"{base}/pkg.tar.gz", tmp_path, DIGEST, timeout_s=5, session=http)
    assert path.read_bytes() == PAYLOAD
    assert state.ranges("/pkg.tar.gz") == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left to send


def test_cli_fetch_downloads_and_imports(site: tuple[Site, str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = site
    package = write_sample_package(tmp_path / "pkg", Variant.BETTER)
    archive = tmp_path / "classifier-better.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(package, arcname="pkg")
    state.files["/classifier-better.tar.gz"] = archive.read_bytes()
    repository = Path(shutil.copytree(ROOT / "model_repository", tmp_path / "repo", ignore=classifier_only))
    # Unsigned on purpose: the test holds both before and after the import path checks signatures.
    monkeypatch.setenv("ORCH_ALLOW_UNSIGNED", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    @click.group()
    @click.pass_context
    def app(ctx: click.Context) -> None:
        ctx.obj = State()
        ctx.obj.options = {"repository": str(repository), "state_dir": str(tmp_path / "state"), "url": None,
                           "default_model": None, "timeout_s": 5.0, "lock_timeout_s": 5.0}

    register(app)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = CliRunner().invoke(app, ["fetch", f"{base}/classifier-better.tar.gz", "--sha256", digest])
    assert result.exit_code == 0, result.output
    assert "classifier: filed v2 from http://127.0.0.1" in result.output
    assert (repository / "classifier" / "2" / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()
    assert listing(tmp_path / "state" / "downloads") == []

    refused = CliRunner().invoke(app, ["fetch", f"{base}/classifier-better.tar.gz", "--sha256", "0" * 64])
    assert refused.exit_code == 3 and "does not match the expected" in refused.output
