from orchestrator.core.journal import Record, Result
from orchestrator.store.journal import Cursor, Journal


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
    assert len(history.records) == 1 and history.skipped_lines == 1
    journal.append(Record("rollback", Result.SUCCEEDED, "c", to_version=1))
    history = journal.read()
    assert [r.op for r in history.records] == ["a", "c"]
    assert history.skipped_lines == 1


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
