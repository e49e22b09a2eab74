"""`status`, `history`, `describe`, `pause` and `resume` as a user runs them (the `orchestrate` entry point in
a subprocess) against a real Triton: what they print, in each output format, and the exit codes scripts
rely on."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
import yaml

from orchestrator.sample import Variant
from orchestrator.triton.embedded import free_ports

from .conftest import MODEL, Stack

pytestmark = pytest.mark.triton


def _promote_better(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    stack.triton().load(MODEL)  # absorb Triton's one reload after start (see test_promote)
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    result = stack.cli("promote", "v2")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def not_triton() -> Iterator[str]:
    """Something else on the port: a web server answering every path with an HTML page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>router login</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_status_exit_codes_say_healthy_unreachable_not_triton_out_of_sync_and_unverified(
        stack: Stack, packages, not_triton: str) -> None:  # type: ignore[no-untyped-def]
    _promote_better(stack, packages)
    healthy = stack.cli("status")
    assert healthy.returncode == 0, healthy.stderr
    assert "model classifier: serving v2 (verified), fallback v1, resident v1, v2 (in sync)" in healthy.stdout
    [data] = json.loads(stack.cli("status", "--json").stdout)
    assert (data["fallback"], data["healthy"], data["problems"]) == (1, True, [])

    down = stack.cli("--url", "http://127.0.0.1:9", "--timeout", "1", "status")
    assert down.returncode == 9 and "Triton unreachable" in down.stdout  # the disk's view is printed all the same
    [row] = [r for r in json.loads(stack.cli("--url", "http://127.0.0.1:9", "status", "-o", "json").stdout)[0][
        "versions"] if r["version"] == 2]
    assert row["triton_state"] is None

    for command in (("status",), ("rollback",)):
        other = stack.cli("--url", not_triton, *command)
        assert other.returncode == 9, (command, other.stderr)
        assert f"{not_triton} is not Triton: " in other.stderr and "text/html" in other.stderr
        assert "Traceback" not in other.stderr

    stack.triton().unload(MODEL)  # someone unloaded the model behind the orchestrator's back
    drifted = stack.cli("status")
    assert drifted.returncode == 14
    assert "Triton holds nothing, the disk says v1, v2: run `orchestrate reconcile classifier`" in drifted.stderr
    assert stack.cli("reconcile").returncode == 0

    assert stack.cli("import", str(packages[Variant.BASELINE])).returncode == 0  # v3, never verified
    assert stack.cli("rollback", "--to", "3", "--force").returncode == 0
    forced = stack.cli("status")
    assert forced.returncode == 14 and "v3 serves and is unverified, not verified" in forced.stderr
    assert len(forced.stderr.strip().splitlines()) == 1

    waited = stack.cli("status", "--timeout", "1", "--interval", "0.2")
    assert waited.returncode == 14 and "after 1 s, not healthy" in waited.stderr
    assert stack.cli("rollback", "--to", "1").returncode == 0  # v2 was rolled back from: v1 is the verified one
    done = stack.cli("status", "--timeout", "30", "--interval", "0.2", "-o", "json")
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])[0]["served"] == 1


def test_wide_yaml_history_with_offsets_and_describe(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    _promote_better(stack, packages)
    wide = stack.cli("status", "-o", "wide")
    assert wide.returncode == 0 and "FILED" in wide.stdout and "FAILED LOADS" in wide.stdout
    [doc] = yaml.safe_load(stack.cli("status", "-o", "yaml").stdout)
    assert doc["served"] == 2 and doc["fallback"] == 1

    history = stack.cli("history").stdout.splitlines()
    promote = next(line for line in history if " promote " in line)
    assert "+00:00" in promote.split()[0]  # the UTC offset is kept
    assert " OP " in stack.cli("history", "-o", "wide").stdout.splitlines()[0]
    records = yaml.safe_load(stack.cli("history", "-o", "yaml").stdout)
    assert records[-1]["action"] == "promote" and records[-1]["to"] == 2

    text = stack.cli("describe", "classifier", "v2")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("classifier v2: verified, serving, Triton READY")
    assert "artifact model.onnx: sha256 " in text.stdout and "golden accuracy: " in text.stdout
    assert "journal (" in text.stdout and "promote" in text.stdout
    described = json.loads(stack.cli("describe", "v2", "-o", "json").stdout)
    assert described["serving"] and described["attestation"]["verification"]["status"] == "verified"
    assert "verification" not in described["meta"]  # the package's own claims are never shown as evidence
    assert {r["action"] for r in described["journal"]} >= {"import", "promote"}
    fallback = json.loads(stack.cli("describe", "v1", "--json").stdout)
    assert fallback["fallback"] and not fallback["serving"]
    missing = stack.cli("describe", "v9")
    assert missing.returncode == 2 and "has no version v9" in missing.stderr


def test_pause_and_resume_are_journaled_and_shown(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    _promote_better(stack, packages)
    paused = stack.cli("pause", "classifier", "--reason", "line 3 maintenance")
    assert paused.returncode == 0 and "automatic rollback paused (by pytest at " in paused.stdout
    assert "already paused" in stack.cli("pause", "classifier").stdout
    status = stack.cli("status")
    assert status.returncode == 0  # paused is not unhealthy
    assert "automatic rollback paused by pytest at " in status.stdout and "line 3 maintenance" in status.stdout
    assert json.loads(stack.cli("status", "--json").stdout)[0]["paused"]["reason"] == "line 3 maintenance"
    assert stack.cli("resume", "classifier").stdout.strip() == "automatic rollback resumed"
    assert stack.cli("resume", "classifier").stdout.strip() == "not paused: nothing to resume"
    assert json.loads(stack.cli("status", "--json").stdout)[0]["paused"] is None
    actions = [r["action"] for r in json.loads(stack.cli("history", "--json").stdout)]
    assert actions[-2:] == ["pause", "resume"]
