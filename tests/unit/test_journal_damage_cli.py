"""A damaged journal record is reported by `history` (exit 6, the rest shown) and by `status`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.core.journal import Record, Result
from orchestrator.store.journal import JOURNAL_FILE, Journal

SEED = Path(__file__).resolve().parents[2] / "model_repository"
NO_TRITON = "http://127.0.0.1:9"  # nothing listens: status answers from disk


def _setup(tmp_path: Path) -> tuple[list[str], Path]:
    repository, state = tmp_path / "repo", tmp_path / "state"
    shutil.copytree(SEED, repository)
    (state / "classifier").mkdir(parents=True)
    journal_path = state / "classifier" / JOURNAL_FILE
    journal = Journal(journal_path)
    journal.append(Record("import", Result.SUCCEEDED, "a", to_version=1, reason="first"))
    journal.append(Record("import", Result.SUCCEEDED, "b", to_version=2, reason="second"))
    journal.append(Record("import", Result.SUCCEEDED, "c", to_version=3, reason="third"))
    return ["--repository", str(repository), "--state-dir", str(state), "--url", NO_TRITON], journal_path


def _damage_second_line(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"second", b"sekond")  # valid JSON still; only the checksum knows
    path.write_bytes(b"\n".join(lines))


def test_history_shows_every_readable_record_then_names_the_damaged_one(tmp_path: Path) -> None:
    base, path = _setup(tmp_path)
    _damage_second_line(path)
    result = CliRunner().invoke(app, [*base, "history", "classifier", "--json"])
    assert result.exit_code == 6
    shown = json.loads(result.stdout)
    assert [r["reason"] for r in shown] == ["first", "third"]
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "1 damaged record" in error[0] and f"{JOURNAL_FILE} at byte" in error[0]
    assert "checksum does not match" in error[0]


def test_a_torn_last_write_is_a_warning_not_an_error(tmp_path: Path) -> None:
    base, path = _setup(tmp_path)
    with path.open("ab") as handle:
        handle.write(b'{"crc":"0000')  # a power cut mid-write
    result = CliRunner().invoke(app, [*base, "history", "classifier"])
    assert result.exit_code == 0
    assert "torn write" in result.stderr and "third" in result.stdout


def test_status_reports_the_damage_from_the_journal_summary(tmp_path: Path) -> None:
    base, path = _setup(tmp_path)
    _damage_second_line(path)
    result = CliRunner().invoke(app, [*base, "status", "classifier", "--json"])
    (status,) = json.loads(result.stdout)
    assert status["journal_damaged_count"] == 1 and f"{JOURNAL_FILE} at byte" in status["journal_damaged"][0]
    text = CliRunner().invoke(app, [*base, "status", "classifier"]).stdout
    assert "journal damaged: 1 record(s)" in text


def test_status_shows_a_journal_behind_the_config(tmp_path: Path) -> None:
    base, path = _setup(tmp_path)
    # The journal says v2 serves (a switch the config no longer shows: records yet to be written, or a hand edit).
    Journal(path).append(Record("promote", Result.SUCCEEDED, "d", from_version=1, to_version=2))
    (status,) = json.loads(CliRunner().invoke(app, [*base, "status", "classifier", "--json"]).stdout)
    assert status["served"] == 1 and "journal's last switch served v2" in status["journal_behind"]
    Journal(path).append(Record("rollback", Result.SUCCEEDED, "e", from_version=2, to_version=1))
    (status,) = json.loads(CliRunner().invoke(app, [*base, "status", "classifier", "--json"]).stdout)
    assert status["journal_behind"] is None
