"""The watcher's per-tick reads: a stat when nothing changed, a read when anything did (a replaced file, an
append, a file that appeared or went), and a read again while a file is too fresh to trust its mtime. And
the /metrics scrape its daemon shares."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.core.journal import Record
from orchestrator.daemons.shared_scrape import SharedScrape
from orchestrator.daemons.watched_files import WatchedFiles
from orchestrator.store.atomic import write_atomic
from orchestrator.store.file_keys import RACY_NS, Cached
from orchestrator.store.repository import ModelStore
from orchestrator.triton import metrics as triton_metrics
from orchestrator.triton.twin import VirtualClock

ROOT = Path(__file__).resolve().parents[3]


def aged(path: Path, seconds: float = 10.0) -> None:
    """As if the file was last written ``seconds`` ago: past the racy window."""
    past = os.stat(path).st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(past, past))


class Counted:
    def __init__(self, path: Path) -> None:
        self.path, self.reads = path, 0

    def __call__(self) -> str | None:
        self.reads += 1
        return self.path.read_text() if self.path.exists() else None


def test_an_unchanged_file_is_read_once_and_a_replaced_one_again(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text('{"stable": 1}')
    aged(path)
    read = Counted(path)
    cached = Cached(read, path)
    assert [cached() for _ in range(5)] == ['{"stable": 1}'] * 5 and read.reads == 1
    write_atomic(path, '{"stable": 2}')  # the same size: a new inode
    assert cached() == '{"stable": 2}' and read.reads == 2
    aged(path)
    cached()
    assert cached() == '{"stable": 2}' and read.reads == 3  # trusted again once it is old enough
    path.unlink()
    assert cached() is None and read.reads == 4
    assert cached() is None and read.reads == 4  # still absent: nothing to read
    path.write_text("{}")
    assert cached() == "{}"


def test_a_file_written_just_now_is_read_again_until_its_mtime_can_be_trusted(tmp_path: Path) -> None:
    """Two writes within the file system's clock tick can have one mtime: a fresh file is not trusted."""
    path = tmp_path / "paused.json"
    path.write_text("aaaa")
    read = Counted(path)
    cached = Cached(read, path)
    cached()
    stamp = os.stat(path).st_mtime_ns
    path.write_text("bbbb")  # in place, the same size...
    os.utime(path, ns=(stamp, stamp))  # ...and, as on a coarse clock, the same mtime
    assert cached() == "bbbb" and read.reads == 2
    assert RACY_NS < 1e9


def test_a_read_that_raises_is_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text("x")
    aged(path)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("unreadable")
        return "ok"

    cached = Cached(flaky, path)
    try:
        cached()
    except ValueError:
        pass
    assert cached() == "ok" and len(calls) == 2


def test_the_model_store_reads_follow_edits_and_appends(tmp_path: Path) -> None:
    repository, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository" / "classifier", repository / "classifier")
    shutil.copytree(ROOT / "orchestrator_state" / "classifier", state / "classifier")
    store = ModelStore(repository / "classifier", state / "classifier")
    files = WatchedFiles(store)
    assert files.resident() == (1,)
    shutil.copytree(repository / "classifier" / "1", repository / "classifier" / "2")  # a version filed
    config = repository / "classifier" / "config.pbtxt"
    write_atomic(config, config.read_text().replace("versions: [ 1 ]", "versions: [ 1, 2 ]"))
    assert files.resident() == (1, 2)
    assert files.pause() is None and files.labels() == {}
    write_atomic(state / "classifier" / "paused.json", '{"by": "ops", "at": "now", "reason": "calibration"}')
    assert files.pause() == {"by": "ops", "at": "now", "reason": "calibration"}
    assert files.journal_changed()  # the first look
    store.journal.append(Record("label", "succeeded", "op1", actor="pytest"))
    assert files.journal_changed()
    aged(store.journal.path)
    assert files.journal_changed()  # its mtime moved: looked at once more
    assert not files.journal_changed() and not files.journal_changed()


def test_watchers_that_look_within_a_moment_share_one_scrape(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fetched: list[str] = []

    def scrape(url: str, timeout_s: float) -> triton_metrics.Snapshot | None:
        fetched.append(url)
        return None  # refused: shared as well

    monkeypatch.setattr(triton_metrics, "scrape", scrape)
    clock = VirtualClock(100.0)
    shared = SharedScrape(clock)
    for _ in range(10):
        assert shared("http://triton:8002/metrics", 2.0) is None
    assert fetched == ["http://triton:8002/metrics"]
    clock.sleep(0.5)
    shared("http://triton:8002/metrics", 2.0)
    shared("http://other:8002/metrics", 2.0)
    assert len(fetched) == 3
