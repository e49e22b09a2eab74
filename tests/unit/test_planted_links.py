"""Files the orchestrator writes are its own: a symbolic link planted in their place is refused with its path,
and the file it points to is never written (real files, a real `orchestrate` process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic
from orchestrator.store.journal import Journal
from orchestrator.store.lock import LOCK_FILE, model_lock
from tests.conftest import classifier_only

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "model_repository", tmp_path / "model_repository", ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", tmp_path / "orchestrator_state", ignore=classifier_only)
    return tmp_path


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_a_lock_file_planted_as_a_link_stops_every_command_naming_it(copy: Path) -> None:
    victim = _victim(copy)
    lock = copy / "orchestrator_state" / "classifier" / LOCK_FILE
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    done = subprocess.run([sys.executable, "-m", "orchestrator", "-r", str(copy / "model_repository"), "--url",
                           "http://127.0.0.1:9", "--timeout", "1", "rollback", "--local"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 6, done.stderr
    assert done.stderr.count("\n") == 1 and f"{lock} is a symbolic link" in done.stderr
    assert victim.read_text() == "precious\n"
    with pytest.raises(RepositoryCorrupt), model_lock(lock.parent, "classifier", 1.0):
        pass


def test_a_journal_planted_as_a_link_is_never_appended_to(copy: Path) -> None:
    victim = _victim(copy)
    path = copy / "journal.log"
    path.symlink_to(victim)
    from orchestrator.core.journal import Action, Record, Result  # noqa: PLC0415

    with pytest.raises(RepositoryCorrupt, match="is a symbolic link"):
        Journal(path).append(Record(action=Action.IMPORT, result=Result.REFUSED, op="x", actor="t"))
    assert victim.read_text() == "precious\n"


def test_an_atomic_write_over_a_planted_link_is_refused(copy: Path) -> None:
    victim = _victim(copy)
    target = copy / "config.pbtxt"
    target.symlink_to(victim)
    with pytest.raises(RepositoryCorrupt, match=r"config\.pbtxt is a symbolic link"):
        write_atomic(target, "name: 'x'\n")
    assert victim.read_text() == "precious\n" and target.is_symlink()
    assert [p.name for p in copy.iterdir() if p.name.endswith(".tmp")] == []
