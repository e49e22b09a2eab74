"""What `orchestrate --help` and friends say: every word of the help kept, one program name, a version."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import app


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), prog_name="orchestrate", terminal_width=200)
    return result.exit_code, result.output


def test_bracketed_help_text_is_printed_as_written() -> None:
    code, out = _run("--help")
    assert code == 0
    for text in ("[env ORCH_REPOSITORY, default ./model_repository]", "[env ORCH_TRITON_URL]",
                 "[env ORCH_DEFAULT_MODEL]"):
        assert text in out
    code, out = _run("fetch", "--help")
    assert code == 0 and "[default: URL.sha256 when the server has one]" in out
    code, out = _run("watch", "--help")
    assert code == 0 and "[env ORCH_TRITON_METRICS_URL, default port 8002 of --url's host]" in out


def test_promote_usage_names_its_arguments_once() -> None:
    code, out = _run("promote", "--help")
    assert code == 0
    assert "Usage: orchestrate promote [OPTIONS] [MODEL] VERSION\n" in out
    assert "second" not in out.lower()


def test_promote_with_three_arguments_is_a_usage_error() -> None:
    code, out = _run("promote", "a", "2", "3")
    assert code == 2 and "expected [MODEL] VERSION, got 3 arguments" in out


def test_version() -> None:
    code, out = _run("--version")
    assert code == 0 and out.startswith("orchestrate, version ")


def test_a_negative_history_limit_is_refused_before_anything_is_read() -> None:
    code, out = _run("history", "--limit", "-1")
    assert code == 2 and "--limit" in out


def test_commands_are_listed_in_release_order() -> None:
    _, out = _run("--help")
    commands = [line.split()[0] for line in out.split("\nCommands:\n", 1)[1].splitlines() if line.startswith("  ")]
    assert commands[:4] == ["import", "promote", "rollback", "reconcile"]


def test_the_watchers_exporter_listens_on_loopback_unless_told_otherwise() -> None:
    from orchestrator.cli.main import watch  # noqa: PLC0415

    [address] = [p for p in watch.params if p.name == "metrics_address"]
    assert address.default == "127.0.0.1"


@pytest.mark.parametrize("command", ["import", "promote", "rollback", "status", "history", "describe", "pause",
                                     "label", "prune", "watch"])
def test_the_everyday_verbs_show_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"orchestrate {command} " in result.output
