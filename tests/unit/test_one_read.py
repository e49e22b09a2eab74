"""A command reads the model store once: config.pbtxt and policy.yaml once each, the journal only
from its cached summary on, every meta.yaml at most once. Run on the twin over a real repository."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from orchestrator.settings import Settings
from orchestrator.store import snapshot
from orchestrator.store.journal import Cursor, Journal
from orchestrator.store.repository import ModelStore
from orchestrator.triton.twin import Behaviour, TritonTwin
from orchestrator.usecases.orchestrator import Orchestrator
from tests.conftest import classifier_only

ROOT = Path(__file__).resolve().parents[2]
MODEL = "classifier"


def onnx_behaviour(model: str, version: int, folder: Path | None) -> Behaviour:
    assert folder is not None
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda inputs: {"LOGITS": session.run(["LOGITS"], {"IMAGE": inputs["IMAGE"]})[0]}


class Reads:
    """Counts what the store reads from disk, by file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: Counter[str] = Counter()
        config_text, journal_read, read_since = ModelStore.config_text, Journal.read, Journal._read_since
        read_meta, read_policies = snapshot.read_meta, snapshot.read_policies

        def counted_config(store: ModelStore) -> str:
            self.files["config.pbtxt"] += 1
            return config_text(store)

        def counted_journal(journal: Journal):  # type: ignore[no-untyped-def]
            self.files["journal, whole"] += 1
            return journal_read(journal)

        def counted_tail(journal: Journal, cursor: Cursor):  # type: ignore[no-untyped-def]
            self.files["journal, tail"] += 1
            return read_since(journal, cursor)

        def counted_meta(path: Path):  # type: ignore[no-untyped-def]
            self.files[f"v{path.parent.name}/meta.yaml"] += 1
            return read_meta(path)

        def counted_policies(folder: Path):  # type: ignore[no-untyped-def]
            self.files["policy.yaml"] += 1
            return read_policies(folder)

        monkeypatch.setattr(ModelStore, "config_text", counted_config)
        monkeypatch.setattr(Journal, "read", counted_journal)
        monkeypatch.setattr(Journal, "_read_since", counted_tail)
        monkeypatch.setattr(snapshot, "read_meta", counted_meta)
        monkeypatch.setattr(snapshot, "read_policies", counted_policies)

    def take(self) -> Counter[str]:
        seen, self.files = self.files, Counter()
        return seen


@pytest.fixture
def orch(tmp_path: Path, build_key) -> Iterator[Orchestrator]:  # type: ignore[no-untyped-def]
    repo, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repo, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    (state / "trusted_keys").mkdir()
    shutil.copy(build_key.public, state / "trusted_keys" / build_key.public.name)
    twin = TritonTwin("reads", repo, load_models=(MODEL,), behaviour_for=onnx_behaviour)
    yield Orchestrator(Settings(repo, state_dir=state, triton_url=twin.url, actor="pytest"), triton=twin)


def test_promote_and_rollback_read_each_file_once(orch: Orchestrator, packages, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.sample import Variant  # noqa: PLC0415

    orch.import_package(packages[Variant.BETTER])
    reads = Reads(monkeypatch)

    assert orch.promote(MODEL, 2).changed
    seen = reads.take()
    assert seen["config.pbtxt"] == 1 and seen["policy.yaml"] == 1, seen
    assert seen["journal, tail"] == 1 and seen["journal, whole"] == 0, seen
    assert seen["v2/meta.yaml"] == 1 and seen["v1/meta.yaml"] <= 1, seen

    assert orch.rollback(MODEL).to_version == 1
    seen = reads.take()
    assert seen["config.pbtxt"] == 1 and seen["policy.yaml"] == 1, seen
    assert seen["journal, tail"] == 1 and seen["journal, whole"] == 0, seen
    assert seen["v1/meta.yaml"] == 1 and seen["v2/meta.yaml"] <= 1, seen


def test_a_rollback_reads_only_the_metas_it_needs(orch: Orchestrator, packages, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With many filed versions, choosing the fallback reads the most recently served ones, not all."""
    from orchestrator.sample import Variant  # noqa: PLC0415

    orch.import_package(packages[Variant.BETTER])
    orch.promote(MODEL, 2)
    folder = orch.repository.model(MODEL).folder
    for version in range(3, 30):  # unverified copies of v2 that a rollback must not read
        shutil.copytree(folder / "2", folder / str(version))
    reads = Reads(monkeypatch)
    orch.rollback(MODEL)
    seen = reads.take()
    assert {name for name in seen if name.endswith("meta.yaml")} <= {"v1/meta.yaml", "v2/meta.yaml"}, seen
