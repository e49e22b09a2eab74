"""The journal's summary: what commands need from the past, equal to a fold of the whole history,
read from the cached summary on so that a command's cost does not grow with the journal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator.core.journal import Action, History, JournalSummary, Record, Result
from orchestrator.store.journal import INDEX_EVERY_BYTES, INDEX_SUFFIX, Cursor, Journal


def reference_served(records: list[Record]) -> list[int]:
    """The order versions served in, as the journal has always been read (the whole of it)."""
    served: list[int] = []
    for r in records:
        if r.action in (Action.PROMOTE, Action.ROLLBACK, Action.RECONCILE) and r.result in (Result.SUCCEEDED,
                                                                                            Result.REPAIRED):
            if r.from_version is not None and not served:
                served.append(r.from_version)
            if r.to_version is not None:
                served.append(r.to_version)
    return served


def random_records(seed: int, count: int) -> list[Record]:
    rng = random.Random(seed)
    records, open_ops = [], []
    for i in range(count):
        if open_ops and rng.random() < 0.6:
            op = open_ops.pop(rng.randrange(len(open_ops)))
            result = rng.choice([Result.SUCCEEDED, Result.FAILED, Result.REPAIRED, Result.ABORTED, Result.STEP])
            if result is Result.STEP:
                open_ops.append(op)
        else:
            op, result = f"op{i}", rng.choice([Result.STARTED, Result.REFUSED, Result.ALERT])
            if result is Result.STARTED:
                open_ops.append(op)
        records.append(Record(rng.choice(list(Action)), result, op, from_version=rng.choice([None, 1, 2, 3]),
                              to_version=rng.choice([None, 1, 2, 3, 4])))
    return records


@pytest.mark.parametrize("seed", range(20))
def test_the_summary_equals_the_whole_history_read_at_once(seed: int) -> None:
    records = random_records(seed, 200)
    summary = JournalSummary()
    for start in range(0, len(records), 17):  # folded piece by piece, as commands meet them
        summary = summary.add(*records[start:start + 17])
    history = History(tuple(records))
    assert summary.unfinished() == history.unfinished()
    assert list(summary.served) == reference_served(records)[-len(summary.served):]
    assert JournalSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def fill(journal: Journal, count: int, start: int = 0) -> list[Record]:
    records = [Record("promote", Result.SUCCEEDED, f"op{i}", actor="t", from_version=i % 3 + 1,
                      to_version=(i + 1) % 3 + 1, details={"pad": "x" * 80}) for i in range(start, start + count)]
    for record in records:
        journal.append(record)
    return records


def test_a_command_reads_only_what_was_appended_since_the_cached_summary(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path / "version_history.log")
    records = fill(journal, 200)
    assert journal.summary() == JournalSummary().add(*records)  # the first reader caches it
    assert (tmp_path / ("version_history.log" + INDEX_SUFFIX)).exists()
    more = fill(journal, 3, start=200)
    offsets: list[int] = []
    read_since = Journal._read_since

    def spy(self: Journal, cursor: Cursor):  # type: ignore[no-untyped-def]
        offsets.append(cursor.offset)
        return read_since(self, cursor)

    monkeypatch.setattr(Journal, "_read_since", spy)
    assert journal.summary() == JournalSummary().add(*records, *more)
    assert offsets and offsets[0] > journal.size() - INDEX_EVERY_BYTES  # only the tail


@pytest.mark.parametrize("damage", ["missing", "garbage", "rewritten", "truncated"])
def test_a_cache_that_does_not_match_the_journal_is_rebuilt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    records = fill(journal, 100)
    journal.summary()
    index = Path(str(path) + INDEX_SUFFIX)
    if damage == "missing":
        index.unlink()
    elif damage == "garbage":
        index.write_text("{not json")
    elif damage == "rewritten":  # the same size, other records: restored from elsewhere
        records = [Record(r.action, r.result, r.op, time=r.time, actor="t", from_version=r.to_version,
                          to_version=r.from_version, details=r.details) for r in records]
        path.write_text("".join(r.to_json() + "\n" for r in records))
    else:
        lines = path.read_text().splitlines(keepends=True)[:10]
        path.write_text("".join(lines))
        records = records[:10]
    assert journal.summary() == JournalSummary().add(*records)


def test_an_open_operation_survives_in_the_cached_summary(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "version_history.log")
    fill(journal, 60)
    started = journal.append(Record("rollback", Result.STARTED, "crashed", actor="t", from_version=2, to_version=1))
    fill(journal, 60, start=60)  # other operations' records after it (refusals, alerts) do not close it
    journal.summary()
    assert journal.summary().unfinished() == started


def test_events_are_counted_by_trigger_rule_and_outcome_with_the_time_of_the_last() -> None:
    watch = {"quarantine": True, "evidence": {"rule": "latency"}}
    records = [
        Record("promote", Result.STARTED, "p1", from_version=1, to_version=2),
        Record("promote", Result.SUCCEEDED, "p1", from_version=1, to_version=2, time="2026-01-01T00:00:01+00:00"),
        Record("rollback", Result.STARTED, "r1", actor="watch", from_version=2, to_version=1, details=watch),
        Record("rollback", Result.SUCCEEDED, "r1", actor="watch", from_version=2, to_version=1, details=watch,
               time="2026-01-01T00:00:02+00:00"),
        Record("promote", Result.REFUSED, "p2", to_version=2, time="2026-01-01T00:00:03+00:00"),
        # An operator's rollback, completed by a later command: the trigger is the one who started it.
        Record("rollback", Result.STARTED, "r2", actor="ops@host", from_version=3, to_version=1,
               details={"quarantine": False}),
        Record("rollback", Result.REPAIRED, "r2", actor="watch", from_version=3, to_version=1,
               time="2026-01-01T00:00:04+00:00"),
        Record("rollback", Result.REFUSED, "r3", actor="watch", details={"judged": 2}),  # a dropped judgement
        Record("promote", Result.STARTED, "p3", from_version=1, to_version=4),
        Record("promote", Result.ABORTED, "p3", from_version=1, to_version=4, time="2026-01-01T00:00:05+00:00"),
    ]
    summary = JournalSummary().add(*records)
    assert dict(summary.counts) == {"promote:succeeded": 1, "promote:refused": 1, "promote:failed": 1,
                                    "rollback:watch:latency": 1, "rollback:operator:operator": 1, "quarantine": 1}
    assert summary.last_time("rollback") == "2026-01-01T00:00:04+00:00"
    assert summary.last_time("promote_failed") == "2026-01-01T00:00:05+00:00"
    assert summary.last_time("quarantine") == "2026-01-01T00:00:02+00:00"
    # Folded in pieces (as checkpoints and the cache do) or at once: the same.
    assert JournalSummary().add(*records[:5]).add(*records[5:]) == summary
    assert JournalSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def test_a_cached_summary_from_before_counting_is_rebuilt_with_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "version_history.log"
    journal = Journal(path)
    records = fill(journal, 200)
    journal.append(Record("rollback", Result.SUCCEEDED, "x", actor="watch", from_version=2, to_version=1,
                          details={"evidence": {"rule": "health"}}))
    journal.summary()
    index = Path(str(path) + INDEX_SUFFIX)
    cached = json.loads(index.read_text())
    del cached["summary"]["counts"], cached["summary"]["last"]  # as an older orchestrator wrote it
    index.write_text(json.dumps(cached))
    summary = Journal(path).summary()
    assert summary.count("rollback:watch:health") == 1 and summary == journal.read().summary()
    assert len(records) == 200
