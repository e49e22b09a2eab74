"""The replay ring (``store/replay_ring.py``): bounded at every moment, 1 in N, never raising into a request."""

from __future__ import annotations

import ast
import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import replay_ring
from orchestrator.store.replay_ring import LOCK_FILE, SKIP_FILE, RingWriter, read_ring, ring_files, write_skip_list

RING_SOURCE = Path(replay_ring.__file__)


def _on_disk(folder: Path) -> int:
    """Every byte in the folder but the lock file and skip list: records and any temporary file being written."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name not in (LOCK_FILE, SKIP_FILE))


def _frame(seed: int, size: int = 64) -> dict[str, np.ndarray]:
    return {"IMAGE": np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)}


def test_the_bound_holds_at_every_moment_under_offers_of_random_sizes_and_one_larger_than_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ring"
    bound = 50_000
    ring = RingWriter(folder, bound, every_n=1, rng=random.Random(0))
    real_replace = os.replace
    peaks: list[int] = []

    def checked_replace(src: str | Path, dst: str | Path) -> None:  # the moment both the new file and the old exist
        peaks.append(_on_disk(folder))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checked_replace)
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(1, 20_000, 300)]
    sizes[150] = 80_000  # alone above the bound
    for i, size in enumerate(sizes):
        kept = ring.offer({"IMAGE": rng.integers(0, 256, size, dtype=np.uint8), "ID": np.array([i])})
        assert _on_disk(folder) <= bound
        assert ring.total == _on_disk(folder)
        assert kept == (size != 80_000)
    assert max(peaks) <= bound and len(peaks) == 299
    assert ring.dropped == 1 and ring.errors == 0 and ring.kept == 299
    records = read_ring(folder, 1000)
    assert all(len(r["IMAGE"]) < 80_000 for r in records)
    assert [int(r["ID"][0]) for r in records] == sorted(int(r["ID"][0]) for r in records)  # oldest went first
    assert int(records[-1]["ID"][0]) == 299


def test_every_n_keeps_exactly_one_request_in_each_run_of_n(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "ring", 10**8, every_n=20, rng=random.Random(2))
    kept = [ring.offer(_frame(i)) for i in range(1000)]
    assert sum(kept) == 50 == ring.kept and ring.offered == 1000
    assert all(sum(kept[run:run + 20]) == 1 for run in range(0, 1000, 20))
    assert len(ring_files(tmp_path / "ring")) == 50


def test_a_round_robin_of_cameras_cannot_hide_from_every_n(tmp_path: Path) -> None:
    """A fixed counter (every 20th) would only ever see camera 0 of 4: the pick moves inside each run."""
    ring = RingWriter(tmp_path / "ring", 10**8, every_n=20, rng=random.Random(3))
    for i in range(400):
        ring.offer({"IMAGE": np.full(16, i % 4, np.uint8), "N": np.array([i])})
    cameras = {int(r["IMAGE"][0]) for r in read_ring(tmp_path / "ring", 100)}
    assert cameras == {0, 1, 2, 3}


def test_a_request_equal_to_a_record_in_the_ring_is_not_kept_again(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "ring", 10**8, every_n=1)
    probe = _frame(7)
    assert ring.offer(probe) and not ring.offer({"IMAGE": probe["IMAGE"].copy()})
    assert ring.duplicates == 1 and ring.kept == 1
    assert ring.offer(_frame(8))


def test_disk_full_injected_into_os_replace_is_counted_never_raised_and_sampling_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ring"
    ring = RingWriter(folder, 10**6, every_n=1)
    assert ring.offer(_frame(0))
    real_replace = os.replace

    def full(src: str | Path, dst: str | Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    assert [ring.offer(_frame(i)) for i in range(1, 4)] == [False, False, False]
    assert ring.errors == 3 and "No space left on device" in ring.last_error
    assert [p.name for p in folder.iterdir() if p.name != LOCK_FILE] == ["000000000000.npz"]  # no temp file left
    assert ring.total == _on_disk(folder)
    monkeypatch.setattr(os, "replace", real_replace)
    assert ring.offer(_frame(9)) and ring.kept == 2


def test_an_unusable_folder_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "ring").write_text("a file where the folder goes")  # root ignores a read-only mode: this it cannot
    ring = RingWriter(tmp_path / "ring", 10**6, every_n=1)
    assert ring.offer(_frame(0)) is False and ring.offer(_frame(1)) is False
    assert ring.errors >= 2 and ring.kept == 0


def test_a_tensor_the_ring_cannot_hold_is_dropped_not_pickled(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "ring", 10**6, every_n=1)
    assert ring.offer({"TEXT": np.array([b"abc", "d"], dtype=object)}) is False
    assert ring.offer({}) is False
    assert ring.dropped == 2 and ring.errors == 0 and ring_files(tmp_path / "ring") == []


def test_partial_and_damaged_files_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    ring = RingWriter(folder, 10**6, every_n=1)
    for i in range(5):
        ring.offer({"IMAGE": np.full(1000, i, np.uint8)})
    files = ring_files(folder)
    data = files[2].path.read_bytes()
    files[2].path.write_bytes(data[: len(data) // 2])  # cut short
    files[3].path.write_bytes(b"not a zip at all")
    skipped: list[str] = []
    records = read_ring(folder, 10, skipped)
    assert [int(r["IMAGE"][0]) for r in records] == [0, 1, 4]
    assert [s.split(":")[0] for s in skipped] == [files[3].path.name, files[2].path.name]


def test_read_ring_gives_the_newest_limit_newest_last(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "ring", 10**6, every_n=1)
    for i in range(10):
        ring.offer({"N": np.array([i])})
    assert [int(r["N"][0]) for r in read_ring(tmp_path / "ring", 3)] == [7, 8, 9]
    assert read_ring(tmp_path / "absent", 3) == []


def test_a_restarted_writer_rescans_counts_on_and_applies_a_lowered_bound(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    first = RingWriter(folder, 10**6, every_n=1)
    for i in range(6):
        first.offer({"IMAGE": np.full(1000, i, np.uint8)})
    size = ring_files(folder)[0].size
    first.close()
    (folder / ".000000000099.npz.tmp").write_bytes(b"interrupted")
    second = RingWriter(folder, 3 * size, every_n=1)
    assert second.offer({"IMAGE": np.full(1000, 42, np.uint8)})
    names = [f.path.name for f in ring_files(folder)]
    assert names == ["000000000004.npz", "000000000005.npz", "000000000006.npz"]
    assert not (folder / ".000000000099.npz.tmp").exists()
    assert second.total == _on_disk(folder) <= 3 * size


def test_a_second_writer_records_nothing_until_the_first_lets_go(tmp_path: Path) -> None:
    """Two instances of a step (or the new one while Triton reloads it): one writer, so the total stays exact."""
    folder = tmp_path / "ring"
    first, second = RingWriter(folder, 10**6, every_n=1), RingWriter(folder, 10**6, every_n=1)
    assert first.offer(_frame(0))
    assert second.offer(_frame(1)) is False and second.waiting == 1 and second.errors == 0
    first.close()
    assert second.offer(_frame(2)) and second.total == _on_disk(folder)
    assert [f.seq for f in ring_files(folder)] == [0, 1]


def test_the_ring_module_stands_alone_with_numpy(tmp_path: Path) -> None:
    """It ships into a python-backend step's version folder: stdlib and numpy only."""
    tree = ast.parse(RING_SOURCE.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots - {"__future__", "numpy"} <= set(sys.stdlib_module_names)
    shipped = tmp_path / "1" / "replay_ring.py"
    shipped.parent.mkdir()
    shipped.write_bytes(RING_SOURCE.read_bytes())
    # Imported as the step imports it (its folder on sys.path), in an interpreter that never saw the orchestrator.
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import replay_ring as r; "
            "w = r.RingWriter(sys.argv[2], 10**6, 1); assert w.offer({'IMAGE': np.zeros(4, np.uint8)}); "
            "assert len(r.read_ring(sys.argv[2], 5)) == 1; "
            "assert not [m for m in sys.modules if m.startswith('orchestrator')]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(shipped.parent), str(tmp_path / "ring")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_writer_refuses_a_bound_or_rate_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes and every_n"):
        RingWriter(tmp_path, 0, 1)


def test_requests_made_only_of_listed_rows_are_not_recorded_and_a_new_list_is_read(tmp_path: Path) -> None:
    """The golden set's rows: the watcher's probes and promote's golden runs pass through the recording step."""
    folder = tmp_path / "ring"
    golden = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    assert write_skip_list(folder, {"IMAGE": golden}) == 6
    ring = RingWriter(folder, 10**6, every_n=1)
    assert not ring.offer({"IMAGE": golden[:4]}) and not ring.offer({"IMAGE": golden[5:]})
    assert ring.skipped == 2 and ring.kept == 0
    mixed = np.concatenate([golden[:1], _frame(1, 8 * 8 * 3)["IMAGE"].reshape(1, 8, 8, 3)])
    assert ring.offer({"IMAGE": mixed})  # one camera frame in it: a production input
    assert ring.offer({"OTHER": golden[:1]})  # under another input name: not listed
    write_skip_list(folder, {"IMAGE": golden[:1]})
    assert ring.offer({"IMAGE": golden[5:]}) and ring.skipped == 2
    assert [f.seq for f in ring_files(folder)] == [0, 1, 2]


def test_a_caller_predicate_skips_requests(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "ring", 10**6, every_n=1, skip=lambda inputs: int(inputs["N"][0]) % 2 == 0)
    kept = [ring.offer({"N": np.array([i])}) for i in range(6)]
    assert kept == [False, True, False, True, False, True] and ring.skipped == 3


def test_a_restarted_writer_remembers_the_newest_records_so_a_replay_is_not_recorded_again(tmp_path: Path) -> None:
    """Triton restarts a step's stub on a promote, and the promote's replay sends the newest records through it."""
    folder = tmp_path / "ring"
    first = RingWriter(folder, 10**6, every_n=1)
    frames = [_frame(i) for i in range(5)]
    for frame in frames:
        first.offer(frame)
    first.close()
    second = RingWriter(folder, 10**6, every_n=1)
    assert [second.offer(f) for f in frames] == [False] * 5 and second.duplicates == 5
    assert second.offer(_frame(99))
