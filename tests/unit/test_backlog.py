"""The watcher's backlog: writes the disk refused are made later, in order; other errors are not kept."""

from __future__ import annotations

import errno

import pytest

from orchestrator.store.backlog import WriteBacklog


class Disk:
    """Real enough for order and refusal: a list that refuses writes while ``full``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.full = False

    def writer(self, line: str, error: int = errno.ENOSPC):  # type: ignore[no-untyped-def]
        def write() -> str:
            if self.full:
                raise OSError(error, "refused")
            self.lines.append(line)
            return line
        return write


def test_refused_writes_wait_and_are_made_in_their_order() -> None:
    disk, backlog = Disk(), WriteBacklog()
    assert backlog.attempt("a", disk.writer("a")) == "a"
    disk.full = True
    assert backlog.attempt("b", disk.writer("b")) is None
    assert backlog.attempt("c", disk.writer("c"), later=disk.writer("c, late")) is None
    assert len(backlog) == 2 and not backlog.flush()
    disk.full = False
    # A new write goes after the waiting ones, never before them.
    assert backlog.attempt("d", disk.writer("d")) == "d"
    assert disk.lines == ["a", "b", "c, late", "d"] and len(backlog) == 0


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS])
def test_every_kind_of_disk_refusal_is_kept(code: int) -> None:
    disk, backlog = Disk(), WriteBacklog()
    disk.full = True
    assert backlog.attempt("a", disk.writer("a", code)) is None and len(backlog) == 1


def test_an_error_that_is_not_the_disks_is_raised_not_kept() -> None:
    disk, backlog = Disk(), WriteBacklog()
    disk.full = True
    with pytest.raises(OSError):
        backlog.attempt("a", disk.writer("a", errno.EACCES))
    assert len(backlog) == 0


def test_the_oldest_wait_is_measured_on_the_given_clock() -> None:
    now = [100.0]
    disk, backlog = Disk(), WriteBacklog(clock=lambda: now[0])
    disk.full = True
    backlog.attempt("a", disk.writer("a"))
    now[0] = 107.5
    assert backlog.oldest_s() == 7.5
    disk.full = False
    assert backlog.flush() and backlog.oldest_s() == 0.0
