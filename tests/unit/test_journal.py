import os

import pytest

from orchestrator.core.journal import Damage, Record, Result
from orchestrator.store.journal import Cursor, Journal, frame, unframe


def test_records_round_trip_and_unfinished_operation(tmp_path):
    journal = Journal(tmp_path / "version_history.log")
    journal.append(Record("import", Result.STARTED, "a", to_version=2))
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=2, duration_ms=3.0))
    journal.append(Record("promote", Result.STARTED, "b", from_version=1, to_version=2,
                          details={"resident_before": [1]}))
    history = journal.read()
    assert [r.result for r in history.records] == ["started", "succeeded", "started"]
    unfinished = history.unfinished()
    assert unfinished is not None and unfinished.op == "b" and unfinished.details["resident_before"] == [1]
    journal.append(Record("promote", Result.SUCCEEDED, "b", from_version=1, to_version=2))
    assert journal.read().unfinished() is None


def test_torn_last_record_is_skipped_and_fenced(tmp_path):
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=2))
    with path.open("a") as handle:
        handle.write('{"action":"promote","result":"sta')  # power cut mid-write
    history = journal.read()
    assert len(history.records) == 1 and [p.kind for p in history.problems] == [Damage.TORN]
    journal.append(Record("rollback", Result.SUCCEEDED, "c", to_version=1))
    history = journal.read()
    assert [r.op for r in history.records] == ["a", "c"]
    # Fenced: still a torn write, not damage, once records follow it.
    assert [p.kind for p in history.problems] == [Damage.TORN] and history.damaged == ()
    assert journal.summary().damaged_count == 0


def test_record_json_uses_from_and_to(tmp_path):
    line = Record("rollback", Result.SUCCEEDED, "x", from_version=3, to_version=2, reason="why").to_json()
    assert '"from":3' in line and '"to":2' in line
    assert Record.from_json(line).reason == "why"


def test_followers_read_only_complete_new_records(tmp_path):
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=2))
    records, cursor = journal.read_since(Cursor(0, 0))
    assert [r.op for r in records] == ["a"] and cursor == Cursor(0, path.stat().st_size)
    with path.open("a") as handle:
        handle.write('{"action":"promote"')  # another process mid-write
    records, later = journal.read_since(cursor)
    assert records == [] and later == cursor
    assert journal.read_since(journal.cursor())[0] == []


def test_each_line_carries_a_checksum_of_its_record(tmp_path):
    record = Record("promote", Result.SUCCEEDED, "a", from_version=1, to_version=2, reason="ok")
    line = frame(record)
    assert line.startswith(b'{"crc":"') and line.endswith(b"\n")
    assert unframe(line.rstrip(b"\n")) == record
    assert unframe(record.to_json().encode()) == record  # a line from before checksums reads as it is


@pytest.mark.parametrize("change", [
    lambda line: line.replace(b'"to":2', b'"to":3'),  # one digit flipped: still valid JSON
    lambda line: line.replace(b'"crc":"', b'"crc":"0', 1)[:-1],  # the checksum field shifted
    lambda line: line[:10] + b"\x00" + line[11:],
])
def test_a_damaged_record_in_the_middle_is_reported_with_its_place(tmp_path, change):
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=1))
    journal.append(Record("promote", Result.SUCCEEDED, "b", from_version=1, to_version=2))
    journal.append(Record("rollback", Result.SUCCEEDED, "c", from_version=2, to_version=1))
    lines = path.read_bytes().split(b"\n")
    offset = len(lines[0]) + 1
    lines[1] = change(lines[1])
    path.write_bytes(b"\n".join(lines))
    history = journal.read()
    assert [r.op for r in history.records] == ["a", "c"]  # the records around it are all there
    (problem,) = history.damaged
    assert problem.file == "version_history.log" and problem.offset == offset
    assert "version_history.log at byte" in problem.describe()
    summary = journal.summary()
    assert summary.damaged_count == 1 and summary.damaged == (problem.describe(),)
    # Appends go on; the damage stays reported.
    journal.append(Record("import", Result.SUCCEEDED, "d", to_version=3))
    assert [r.op for r in journal.read().records] == ["a", "c", "d"] and len(journal.read().damaged) == 1


def test_a_write_the_disk_cuts_short_leaves_no_half_record_injected_short_write(tmp_path, monkeypatch):
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=1))
    before = path.read_bytes()
    monkeypatch.setenv("ORCH_SHORT_WRITE", "version_history.log:20")
    with pytest.raises(OSError) as raised:
        journal.append(Record("promote", Result.STARTED, "b", from_version=1, to_version=2))
    assert raised.value.errno is not None and "mid-write" in str(raised.value)
    assert path.read_bytes() == before  # truncated back: the record is absent, not half there
    monkeypatch.delenv("ORCH_SHORT_WRITE")
    journal.append(Record("promote", Result.STARTED, "b", from_version=1, to_version=2))
    history = journal.read()
    assert [r.op for r in history.records] == ["a", "b"] and history.problems == ()


def test_a_line_cut_short_by_a_power_cut_reads_torn_not_damaged(tmp_path):
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=1))
    half = frame(Record("promote", Result.STARTED, "b", from_version=1, to_version=2))[:30]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, half)
    os.close(fd)
    assert [p.kind for p in journal.read().problems] == [Damage.TORN]
    journal.append(Record("promote", Result.FAILED, "b", from_version=1, to_version=2))
    assert journal.read().damaged == () and journal.summary().damaged_count == 0
