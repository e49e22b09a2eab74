"""The CLI is the one place errors become one line and an exit code; a bug is one line too."""

from __future__ import annotations

import errno
from collections.abc import Callable

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.common import run
from orchestrator.cli.main import app
from orchestrator.errors import UNEXPECTED_EXIT, Busy, LoadFailed, TritonUnreachable


def _exit(fn: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(click.exceptions.Exit) as caught:
        run(fn)
    return caught.value.exit_code, capsys.readouterr().err.strip().splitlines()


def _raise(exc: BaseException) -> Callable[[], object]:
    def fail() -> object:
        raise exc
    return fail


@pytest.mark.parametrize(("exc", "code", "text"), [
    (Busy("model 'm' is busy"), 7, "error: model 'm' is busy"),
    (LoadFailed("m", "version 3 failed"), 8, "Triton could not load m: version 3 failed"),
    (TritonUnreachable("http://h:1", "Connection refused"), 9, "Triton at http://h:1 is unreachable"),
    (OSError(errno.ENOSPC, "No space left on device", "/repo/m/config.pbtxt"), 11,
     "cannot write (/repo/m/config.pbtxt): No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted; the next command repairs"),
])
def test_our_errors_and_the_disks_are_one_line_with_their_code(exc: BaseException, code: int, text: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, lines = _exit(_raise(exc), capsys)
    assert exit_code == code
    assert len(lines) == 1 and text in lines[0]


def test_a_bug_is_one_line_naming_verbose_never_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, lines = _exit(lambda: {}["missing"], capsys)
    assert exit_code == UNEXPECTED_EXIT
    assert len(lines) == 1 and "unexpected KeyError" in lines[0] and "--verbose" in lines[0]


def test_a_message_spread_over_lines_is_printed_on_one(capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = _exit(_raise(Busy("first\nsecond   third")), capsys)
    assert lines == ["error: first second third"]


def test_a_missing_repository_is_a_usage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["--repository", str(tmp_path / "nowhere"), "status"])
    assert result.exit_code == 2
    assert "is not a folder" in result.output and "Traceback" not in result.output


def test_verbose_shows_where_the_bug_is(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import logging  # noqa: PLC0415

    with caplog.at_level(logging.INFO, logger="orchestrator"):
        exit_code, _ = _exit(lambda: {}["missing"], capsys)
    assert exit_code == UNEXPECTED_EXIT
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
