"""The journal rotates by size into gzipped segments with checkpoints, and nothing is lost: read()
shows every record once, summary() equals a fold of them all, followers see every later record once,
whatever a crash or a second writer did in between."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from orchestrator.core.journal import Action, Damage, JournalSummary, Record, Result
from orchestrator.store.journal import CHECKPOINT_SUFFIX, INDEX_SUFFIX, Cursor, Journal

MAX = 2048  # a handful of records per segment
TIME = "2024-05-01T12:00:00.000+00:00"  # records built twice compare equal


def record(i: int, writer: str = "t") -> Record:
    """Operations that open and close across segments; every 7th stays open."""
    if i % 3 == 0:
        return Record(Action.PROMOTE, Result.STARTED, f"op{i}", TIME, writer, from_version=i % 4 + 1,
                      to_version=(i + 1) % 4 + 1)
    if i % 3 == 1 and (i - 1) % 7:
        return Record(Action.PROMOTE, Result.SUCCEEDED, f"op{i - 1}", TIME, writer, from_version=(i - 1) % 4 + 1,
                      to_version=i % 4 + 1, details={"pad": "x" * 60})
    return Record(Action.ANOMALY, Result.ALERT, f"alert{i}", TIME, writer, reason="r" * 40)


def fill(journal: Journal, count: int, start: int = 0, writer: str = "t") -> list[Record]:
    records = [record(i, writer) for i in range(start, start + count)]
    for r in records:
        journal.append(r)
    return records


def segments(folder: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"gz": [], "plain": [], "checkpoint": [], "temporary": []}
    for path in folder.iterdir():
        rest = path.name.removeprefix("version_history.log.")
        if rest.endswith(".gz") and rest[:-3].isdigit():
            found["gz"].append(int(rest[:-3]))
        elif rest.isdigit():
            found["plain"].append(int(rest))
        elif rest.endswith(CHECKPOINT_SUFFIX):
            found["checkpoint"].append(int(rest.removesuffix(CHECKPOINT_SUFFIX)))
        elif path.name.endswith(".tmp"):
            found["temporary"].append(0)
    return {k: sorted(v) for k, v in found.items()}


def assert_whole(journal: Journal, records: list[Record]) -> None:
    history = journal.read()
    assert list(history.records) == records
    assert journal.summary() == JournalSummary().add(*records)
    assert Journal(journal.path).summary() == JournalSummary().add(*records)  # a fresh process, no memory


def test_the_live_file_rotates_at_the_limit_into_gzipped_segments(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log", max_bytes=MAX)
    records = fill(journal, 120)
    found = segments(tmp_path)
    assert len(found["gz"]) >= 5 and found["gz"] == list(range(1, len(found["gz"]) + 1))
    assert found["plain"] == [] and found["temporary"] == [] and found["checkpoint"] == found["gz"]
    assert 0 < journal.size() <= MAX
    for number in found["gz"]:
        data = gzip.decompress((tmp_path / f"version_history.log.{number}.gz").read_bytes())
        assert len(data) <= MAX and data.endswith(b"\n")
    assert_whole(journal, records)


def test_a_record_larger_than_the_limit_is_still_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log", max_bytes=MAX)
    records = fill(journal, 5)
    big = journal.append(Record(Action.ANOMALY, Result.ALERT, "big", reason="x" * (2 * MAX)))
    after = fill(journal, 2, start=5)
    assert_whole(journal, [*records, big, *after])


def test_summary_after_rotations_equals_the_fold_of_every_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log", max_bytes=MAX)
    records: list[Record] = []
    for step in range(12):
        records += fill(journal, 11, start=len(records))
        assert journal.summary() == JournalSummary().add(*records), step
    summary = journal.summary()
    assert summary.unfinished() is not None and summary.unfinished().op == "op126"  # opened segments ago
    assert_whole(journal, records)


@pytest.mark.parametrize("damage", ["missing", "garbage", "other segment", "all missing", "index too"])
def test_a_missing_or_damaged_checkpoint_is_rebuilt_from_the_segments(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "version_history.log"
    records = fill(Journal(path, max_bytes=MAX), 100)
    last = segments(tmp_path)["checkpoint"][-1]
    checkpoint = tmp_path / f"version_history.log.{last}{CHECKPOINT_SUFFIX}"
    if damage == "missing":
        checkpoint.unlink()
    elif damage == "garbage":
        checkpoint.write_text('{"segment": ')
    elif damage == "other segment":
        checkpoint.write_text((tmp_path / f"version_history.log.{last - 1}{CHECKPOINT_SUFFIX}").read_text())
    else:
        for number in segments(tmp_path)["checkpoint"]:
            (tmp_path / f"version_history.log.{number}{CHECKPOINT_SUFFIX}").unlink()
        if damage == "index too":
            Path(str(path) + INDEX_SUFFIX).unlink(missing_ok=True)
    assert Journal(path, max_bytes=MAX).summary() == JournalSummary().add(*records)
    assert checkpoint.exists()  # written back for the next reader
    journal = Journal(path, max_bytes=MAX)
    records += fill(journal, 40, start=100)
    assert_whole(journal, records)


def crash_state(folder: Path, state: str) -> None:
    """Turn the live file into the next segment as a rotation cut short at ``state`` would leave it."""
    live = folder / "version_history.log"
    number = max(segments(folder)["gz"], default=0) + 1
    plain, packed = folder / f"version_history.log.{number}", folder / f"version_history.log.{number}.gz"
    data, summary = live.read_bytes(), Journal(live).summary()
    live.rename(plain)
    if state == "renamed":
        return
    (folder / f"version_history.log.{number}{CHECKPOINT_SUFFIX}").write_text(
        json.dumps({"segment": number, "summary": summary.to_dict()}))
    if state == "compressing":
        (folder / f".{packed.name}.x1y2.tmp").write_bytes(gzip.compress(data)[: len(data) // 3])
    elif state == "compressed":
        packed.write_bytes(gzip.compress(data))


@pytest.mark.parametrize("state", ["renamed", "checkpointed", "compressing", "compressed"])
def test_a_rotation_cut_short_reads_every_record_once_and_the_next_append_finishes_it(tmp_path: Path,
                                                                                     state: str) -> None:
    path = tmp_path / "version_history.log"
    journal = Journal(path, max_bytes=MAX)
    records = fill(journal, 50)
    assert journal.size() > 0
    follower = journal.cursor()
    crash_state(tmp_path, state)
    assert_whole(Journal(path, max_bytes=MAX), records)
    journal = Journal(path, max_bytes=MAX)  # the next command
    records += fill(journal, 1, start=50)
    found = segments(tmp_path)
    assert found["plain"] == [] and found["temporary"] == [] and found["checkpoint"] == found["gz"]
    assert_whole(journal, records)
    records += fill(journal, 60, start=51)  # and rotations go on from there
    assert_whole(journal, records)
    assert journal.read_since(follower)[0] == records[50:]


def _append_then_crash(path: Path, point: str, count: int) -> None:
    os.environ["ORCH_CRASH_AT"] = point
    fill(Journal(path, max_bytes=MAX), count)


@pytest.mark.parametrize("point", ["journal:rotated", "journal:checkpointed", "journal:compressed"])
def test_a_process_killed_mid_rotation_loses_nothing(tmp_path: Path, point: str) -> None:
    path = tmp_path / "version_history.log"
    child = multiprocessing.get_context("fork").Process(target=_append_then_crash, args=(path, point, 100))
    child.start()
    child.join(60)
    assert child.exitcode == -9  # SIGKILLed at the point, during the first rotation
    history = Journal(path, max_bytes=MAX).read()
    written = len(history.records)
    assert written > 0 and list(history.records) == [record(i) for i in range(written)]
    assert history.problems == ()
    journal = Journal(path, max_bytes=MAX)
    records = [*history.records, *fill(journal, 80, start=written)]
    assert segments(tmp_path)["plain"] == []
    assert_whole(journal, records)


def test_a_follower_receives_every_later_record_once_across_rotations(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log", max_bytes=MAX)
    fill(journal, 7)
    start = journal.cursor()
    follower, seen = start, []
    later: list[Record] = []
    for step in range(30):  # reads between appends, sometimes after several rotations at once
        later += fill(journal, 1 + (step % 5) * 7, start=7 + len(later))
        if step % 4 != 3:
            records, follower = journal.read_since(follower)
            seen += records
    records, follower = journal.read_since(follower)
    seen += records
    assert seen == later and len(segments(tmp_path)["gz"]) >= 10
    assert journal.read_since(follower) == ([], follower) and follower == journal.cursor()
    assert journal.read_since(start)[0] == later  # one jump over every rotation


def test_a_cursor_past_the_end_restarts_at_the_end(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log", max_bytes=MAX)
    fill(journal, 3)
    end = journal.cursor()
    assert journal.read_since(Cursor(end.segment + 2, 0)) == ([], end)
    assert journal.read_since(Cursor(end.segment, end.offset + 999)) == ([], end)
    assert Journal(tmp_path / "none").cursor() == Cursor(0, 0)
    assert Journal(tmp_path / "none").read_since(Cursor(0, 0)) == ([], Cursor(0, 0))


def test_a_torn_last_line_before_a_rotation_is_skipped_once(tmp_path: Path) -> None:
    path = tmp_path / "version_history.log"
    journal = Journal(path, max_bytes=MAX)
    records = fill(journal, 3)
    follower = journal.cursor()
    with path.open("a") as handle:
        handle.write('{"action":"promote","result":"sta' + " " * (MAX - path.stat().st_size - 40))  # power cut
    assert len(journal.read().problems) == 1
    more = fill(journal, 30, start=3)  # the first of these rotates the torn file away
    history = journal.read()
    assert list(history.records) == records + more and [p.kind for p in history.problems] == [Damage.TORN]
    assert gzip.decompress((tmp_path / "version_history.log.1.gz").read_bytes()).endswith(b" ")
    assert journal.summary() == JournalSummary().add(*records, *more)
    assert journal.read_since(follower)[0] == more
    # Without a rotation the next append fences it off, as before.
    with path.open("a") as handle:
        handle.write('{"action":"rollb')
    last = journal.append(record(99))
    history = journal.read()
    assert list(history.records) == [*records, *more, last] and len(history.problems) == 2
    assert history.damaged == ()


def _writer(path: str, name: str, count: int) -> None:
    journal = Journal(Path(path), max_bytes=1024)
    for i in range(count):
        journal.append(record(i, name))


def test_two_processes_appending_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "version_history.log"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(str(path), name, 300)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    follower, followed = Cursor(0, 0), []
    reads: list[tuple[Record, ...]] = []
    summaries: list[JournalSummary] = []
    journal = Journal(path, max_bytes=1024)
    while any(w.is_alive() for w in writers):  # readers meanwhile, rotations under their feet
        records, follower = journal.read_since(follower)
        followed += records
        reads.append(journal.read().records)
        summaries.append(journal.summary())
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    followed += journal.read_since(follower)[0]
    history = journal.read()
    final = list(history.records)
    assert history.problems == () and len(final) == 600
    for name in ("a", "b"):
        assert [r for r in final if r.actor == name] == [record(i, name) for i in range(300)]
    assert followed == final
    # Each look during the run saw the journal as it was at some moment: a prefix of the final order.
    assert all(list(seen) == final[:len(seen)] for seen in reads)
    prefixes = [JournalSummary()]
    for r in final:
        prefixes.append(prefixes[-1].add(r))
    assert all(summary in prefixes for summary in summaries)
    assert len(segments(tmp_path)["gz"]) > 20 and segments(tmp_path)["plain"] == []
    assert_whole(journal, list(history.records))


def test_the_journal_of_an_older_release_reads_on(tmp_path: Path) -> None:
    """A journal from before rotation (one file, an index without a segment count) is read and rotated."""
    path = tmp_path / "version_history.log"
    records = fill(Journal(path), 40)
    Path(str(path) + INDEX_SUFFIX).write_text('{"inode": 1, "offset": 5, "mark": "x", "summary": {}}')
    journal = Journal(path, max_bytes=MAX)
    assert_whole(journal, records)
    records += fill(journal, 1, start=40)  # above the new limit: rotated before this one
    assert segments(tmp_path)["gz"] == [1]
    assert_whole(journal, records)
