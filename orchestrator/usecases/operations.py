"""Use cases: import, promote, rollback, reconcile. Disk is the truth; Triton is brought in line.

Each mutating command takes the model's lock, repairs whatever an interrupted command
left behind, records its intent in the journal, acts, and records the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import faults
from orchestrator.core.checks import Verdict, compare_scores, sanity, top1_accuracy
from orchestrator.core.policy import PromotionPolicy
from orchestrator.core.shadow_gate import load_shadow_policy, require_passed_shadow
from orchestrator.core.switch import SwitchPlan, fallback_order, plan_switch
from orchestrator.core.versions import label
from orchestrator.delivery.package import unpacked, verify_package
from orchestrator.delivery.plan_compat import check_plan
from orchestrator.delivery.signing import TrustPolicy, record_signer
from orchestrator.errors import (
    CandidateRejected,
    LoadFailed,
    OrchestratorError,
    PackageRejected,
    PolicyViolation,
    TritonError,
    TritonUnreachable,
    UnknownModel,
    UsageError,
)
from orchestrator.settings import Settings
from orchestrator.store.journal import (
    ABORTED,
    FAILED,
    REFUSED,
    REPAIRED,
    STARTED,
    STEP,
    SUCCEEDED,
    History,
    Record,
    new_op_id,
    now_iso,
)
from orchestrator.store.lock import model_lock
from orchestrator.store.metafile import META_FILE, MetaError, Verification, VersionMeta, VersionStatus, read_meta
from orchestrator.store.modelconfig import contract, primary_file, to_json
from orchestrator.store.repository import ModelRepository, ModelStore, candidate_name
from orchestrator.store.shadow_state import active_shadow, refuse_while_shadowing
from orchestrator.triton.client import Triton
from orchestrator.triton.golden import GoldenSet, load_golden, run_golden

log = logging.getLogger(__name__)

SWITCH_ACTIONS = ("promote", "rollback")


@dataclass(frozen=True)
class ImportResult:
    model: str
    version: int
    artifacts: dict[str, str]


@dataclass(frozen=True)
class SwitchResult:
    model: str
    action: str
    from_version: int | None
    to_version: int
    resident: tuple[int, ...]
    duration_ms: float  # the whole command
    changed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    switch_ms: float = 0.0  # command start until the target served


def served_history(history: History) -> list[int]:
    """Versions in the order they started serving, from the journal's completed switches."""
    served: list[int] = []
    for record in history.records:
        if record.action in (*SWITCH_ACTIONS, "reconcile") and record.result in (SUCCEEDED, REPAIRED):
            if record.from_version is not None and not served:
                served.append(record.from_version)
            if record.to_version is not None:
                served.append(record.to_version)
    return served


class Orchestrator:
    def __init__(self, settings: Settings, triton: Triton | None = None, trust: TrustPolicy | None = None) -> None:
        self.settings = settings
        assert settings.state_dir is not None
        self.trust = trust or TrustPolicy.from_environment(settings.state_dir)
        self.repository = ModelRepository(settings.repository, settings.state_dir)
        self.triton = triton or Triton(settings.triton_url, settings.admin_key, settings.timeout_s,
                                       settings.load_timeout_s)

    # --- helpers ------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> str:
        if model:
            return model
        if self.settings.default_model:
            return self.settings.default_model
        models = self.repository.models()
        if len(models) == 1:
            return models[0]
        raise UsageError(f"name the model: the repository holds {', '.join(models) or 'no models'}")

    def _record(self, store: ModelStore, action: str, result: str, op: str, **fields: object) -> Record:
        return store.journal.append(Record(action=action, result=result, op=op, actor=self.settings.actor,
                                           **fields))  # type: ignore[arg-type]

    @contextmanager
    def _locked(self, store: ModelStore) -> Iterator[None]:
        with model_lock(store.state, store.name, self.settings.lock_timeout_s):
            yield

    def fallbacks(self, store: ModelStore, exclude: set[int], limit: int | None = None) -> list[int]:
        return fallback_order(served_history(store.journal.read()), store.lazy_statuses(exclude), exclude=-1,
                              limit=limit)

    # --- import -------------------------------------------------------------------------
    def import_package(self, package: Path) -> ImportResult:
        try:
            with unpacked(package) as folder:
                store = self._package_model(folder, str(package))
                with self._locked(store):
                    self._repair(store)
                    return self._file(store, folder, str(package))
        except PackageRejected as exc:
            self._journal_refusal(package, exc)
            raise

    def _package_model(self, folder: Path, package: str) -> ModelStore:
        try:
            model = read_meta(folder / META_FILE).model
        except MetaError as exc:
            raise PackageRejected(package, f"meta.yaml: {exc}") from exc
        try:
            return self.repository.model(model)
        except UnknownModel as exc:
            raise PackageRejected(package, str(exc)) from exc

    def _file(self, store: ModelStore, folder: Path, package: str) -> ImportResult:
        op = new_op_id()
        try:
            signer = self.trust.check(folder, package)
            meta = record_signer(verify_package(folder, package, store.name, store.config()), signer)
            incompatible = self._plan_incompatibility(store, meta, folder)
            if incompatible:
                raise PackageRejected(package, incompatible)
            version = self._import_version(store, meta.version, package)
        except PackageRejected as exc:
            self._record(store, "import", REFUSED, op, reason=exc.reason, details={"package": package})
            exc.journaled = True
            raise
        started = time.monotonic()
        self._record(store, "import", STARTED, op, to_version=version, details={"package": package})
        try:
            store.file_version(folder, meta, version, op)
        except OSError as exc:  # disk full, I/O error: staging is gone, nothing was filed
            self._record(store, "import", FAILED, op, to_version=version, reason=f"write failed: {exc}")
            raise
        faults.checkpoint("import:filed")
        self._record(store, "import", SUCCEEDED, op, to_version=version, duration_ms=_ms(started),
                     details={"package": package, "artifacts": meta.artifacts})
        return ImportResult(store.name, version, dict(meta.artifacts))

    def _journal_refusal(self, package: Path, exc: PackageRejected) -> None:
        """A package refused before its model was known goes to the only (or default) model's journal."""
        if exc.journaled:
            return
        try:
            store = self.repository.model(self.resolve_model(None))
        except OrchestratorError:
            return
        self._record(store, "import", REFUSED, new_op_id(), reason=exc.reason, details={"package": str(package)})

    def _plan_incompatibility(self, store: ModelStore, meta: VersionMeta, folder: Path) -> str | None:
        """For TensorRT models: why the plan cannot load on this server's TensorRT/GPU (Triton must not find out)."""
        if primary_file(store.config()) != "model.plan":
            return None
        return check_plan(meta, folder / "model.plan", self.settings.tensorrt_version,
                          self.settings.compute_capability)

    @staticmethod
    def _import_version(store: ModelStore, declared: int | None, package: str) -> int:
        latest = store.next_version() - 1
        if declared is None:
            return latest + 1
        if declared <= latest:
            raise PackageRejected(package, f"it declares version {declared}, but v{latest} exists: a package may "
                                           f"not re-use or lower a version number")
        return declared

    # --- promote ------------------------------------------------------------------------
    def promote(self, model: str | None, version: int, force: bool = False) -> SwitchResult:
        store = self.repository.model(self.resolve_model(model))
        with self._locked(store):
            self._repair(store)
            store.require(version)
            refuse_while_shadowing(store)  # the candidate entry is the shadow's until it stops
            status = store.status(version)
            served = store.served()
            if status is VersionStatus.QUARANTINED and not force:
                raise PolicyViolation(f"{store.name} v{version} is quarantined "
                                      f"({store.meta(version).verification.reason or 'rolled back by the watcher'}); "
                                      f"promote it with --force if you are sure")
            if version == served:
                return self._settle(store, version, "promote")
            # A broken policy, meta or golden set stops us before anything is touched.
            policy = store.promotion_policy()
            incompatible = self._plan_incompatibility(store, store.meta(version), store.require(version))
            if incompatible:
                raise PolicyViolation(f"{store.name} v{version} cannot run on this server: {incompatible}")
            require_passed_shadow(store, version, load_shadow_policy(store.state))
            golden = load_golden(store.state / policy.golden, contract(store.config()))
            if golden is None:
                raise PolicyViolation(f"{store.name} has no golden set in {store.state / policy.golden}: "
                                      f"a candidate cannot be verified without one")
            self.triton.require_live()
            op = new_op_id()
            started = time.monotonic()
            self._record(store, "promote", STARTED, op, from_version=served, to_version=version,
                         details={"resident_before": list(store.resident())})
            try:
                verdict = self._check_candidate(store, version, served, op, policy, golden)
            except CandidateRejected:
                raise
            except (OrchestratorError, OSError) as exc:
                # Not the candidate's fault (Triton went away, a file is unreadable): serving untouched.
                self._record(store, "promote", FAILED, op, from_version=served, to_version=version, reason=str(exc))
                raise
            try:
                store.set_verification(version, Verification(
                    status=VersionStatus.VERIFIED, verified_by=self.settings.actor, verified_at=now_iso(),
                    golden=verdict.metrics))
                self._record(store, "promote", STEP, op, to_version=version, details={"step": "verified",
                                                                                       "metrics": verdict.metrics})
                faults.checkpoint("promote:verified")
                resident, switched_at = self._switch(store, version, op, "promote", exclude=set())
            except OSError as exc:
                self._close_if_nothing_switched(store, "promote", op, served, version, exc)
                raise
            duration, switch_ms = _ms(started), round((switched_at - started) * 1000.0, 2)
            self._record(store, "promote", SUCCEEDED, op, from_version=served, to_version=version,
                         duration_ms=duration, details={"resident": list(resident), "metrics": verdict.metrics,
                                                        "switch_ms": switch_ms})
            return SwitchResult(store.name, "promote", served, version, resident, duration, True, verdict.metrics,
                                switch_ms)

    def _check_candidate(self, store: ModelStore, version: int, served: int | None, op: str,
                         policy: PromotionPolicy, golden: GoldenSet) -> Verdict:
        """Load ``version`` where it takes no traffic, warm it up and judge it; unload it either way."""
        config = store.config()
        outputs = [t.name for t in config.output]
        batch = min(policy.batch_size, config.max_batch_size) if config.max_batch_size else policy.batch_size
        entry = candidate_name(store.name)
        try:
            _, candidate_config = store.write_candidate_entry(version)
            faults.checkpoint("promote:candidate_entry")
            try:
                self.triton.load(entry, to_json(candidate_config))
            except LoadFailed as exc:
                self._reject(store, version, op, f"load failed: {exc.reason}")
            self._record(store, "promote", STEP, op, to_version=version, details={"step": "candidate_loaded"})
            faults.checkpoint("promote:candidate_loaded")
            for warm in golden.batches(batch)[: policy.warmup_requests]:
                self.triton.infer(entry, warm, outputs)
            try:
                results = run_golden(self.triton, entry, None, golden, outputs, batch)
            except TritonError as exc:
                self._reject(store, version, op, f"inference failed: {exc}")
            verdict = sanity(results, policy.output_bound)
            if not verdict.passed:
                self._reject(store, version, op, f"bad outputs on the golden set: {verdict.reason}")
            if golden.labels is None:
                return Verdict(True, "", {})
            score = top1_accuracy(results[outputs[0]], golden.labels)
            served_score = None
            if served is not None:
                served_results = run_golden(self.triton, store.name, served, golden, outputs, batch)
                served_score = top1_accuracy(served_results[outputs[0]], golden.labels)
            verdict = compare_scores(score, served_score, policy)
            if not verdict.passed:
                self._reject(store, version, op, verdict.reason, verdict.metrics)
            return verdict
        finally:
            self._drop_candidate(store)

    def _drop_candidate(self, store: ModelStore, quiet: bool = False) -> None:
        """Unload the candidate entry, wait until Triton has let go of it, remove its folder."""
        entry = candidate_name(store.name)
        try:
            self.triton.unload(entry)
            if not self.triton.wait_unloaded(entry, None, self.settings.timeout_s):
                log.warning("%s still unloading after %.0fs", entry, self.settings.timeout_s)
        except TritonError as exc:
            if not quiet:
                log.warning("could not unload %s: %s", entry, exc)
        store.remove_candidate_entry()

    def _reject(self, store: ModelStore, version: int, op: str, reason: str,
                metrics: dict[str, float] | None = None) -> None:
        self._drop_candidate(store)
        store.set_verification(version, Verification(status=VersionStatus.FAILED, verified_by=self.settings.actor,
                                                     verified_at=now_iso(), golden=metrics or {}, reason=reason))
        self._record(store, "promote", FAILED, op, from_version=store.served(), to_version=version, reason=reason,
                     details={"metrics": metrics or {}})
        raise CandidateRejected(store.name, version, reason)

    # --- rollback -----------------------------------------------------------------------
    def rollback(self, model: str | None, to: int | None = None, force: bool = False,
                 reason: str = "requested by operator", quarantine: bool = False,
                 evidence: dict[str, object] | None = None) -> SwitchResult:
        """Serve the last verified version (or ``to``) again.

        ``quarantine`` (the watcher's automatic rollback) marks the version rolled back from so
        that it is never promoted again without --force; ``evidence`` goes into the journal.
        """
        store = self.repository.model(self.resolve_model(model))
        with self._locked(store):
            seen = len(store.journal.read().records)
            self._repair(store)
            for record in store.journal.read().records[seen:]:
                if record.action == "rollback" and record.result == REPAIRED and to in (None, record.to_version):
                    # The interrupted rollback this command repeats has just been completed.
                    self.sync_triton(store)
                    return SwitchResult(store.name, "rollback", record.from_version, store.served() or 0,
                                        store.resident(), 0.0, True)
            served = store.served()
            if served is None:
                raise PolicyViolation(f"{store.name} serves nothing: there is nothing to roll back")
            if to is None:
                targets = self.fallbacks(store, exclude={served}, limit=1)
                if not targets:
                    raise PolicyViolation(f"{store.name} has no verified version other than v{served} "
                                          f"to roll back to")
                to = targets[0]
            store.require(to)
            if to == served:
                return self._settle(store, to, "rollback")
            status = store.status(to)
            if status is not VersionStatus.VERIFIED and not force:
                raise PolicyViolation(f"{store.name} v{to} is {status.value}, not verified: roll back to it only "
                                      f"with --force")
            self.triton.require_live()
            op = new_op_id()
            started = time.monotonic()
            self._record(store, "rollback", STARTED, op, from_version=served, to_version=to, reason=reason,
                         details={"resident_before": list(store.resident()), "quarantine": quarantine,
                                  "evidence": evidence or {}})
            try:
                resident, switched_at = self._switch(store, to, op, "rollback", exclude={served})
            except OSError as exc:
                self._close_if_nothing_switched(store, "rollback", op, served, to, exc)
                raise
            switch_ms = round((switched_at - started) * 1000.0, 2)
            self._await_unloaded(store, {served})
            self._mark_rolled_back(store, served, reason, quarantine, self.settings.actor)
            duration = _ms(started)
            self._record(store, "rollback", SUCCEEDED, op, from_version=served, to_version=to, reason=reason,
                         duration_ms=duration, details={"resident": list(resident), "switch_ms": switch_ms,
                                                        "quarantine": quarantine, "evidence": evidence or {}})
            return SwitchResult(store.name, "rollback", served, to, resident, duration, True, switch_ms=switch_ms)

    def _close_if_nothing_switched(self, store: ModelStore, action: str, op: str, served: int | None, target: int,
                                   exc: OSError) -> None:
        """A write failed (disk full): close the operation as failed if the disk still serves ``served``;
        otherwise leave it open so the next command completes the switch it had started."""
        if store.served() == served:
            self._record(store, action, FAILED, op, from_version=served, to_version=target,
                         reason=f"write failed: {exc}")

    @staticmethod
    def _mark_rolled_back(store: ModelStore, version: int, reason: str, quarantine: bool, actor: str) -> None:
        status = store.status(version)
        if status is VersionStatus.QUARANTINED or (status is not VersionStatus.VERIFIED and not quarantine):
            return  # a failed or unverified version keeps its status; quarantine is never lifted here
        mark = VersionStatus.QUARANTINED if quarantine else VersionStatus.ROLLED_BACK
        store.set_verification(version, Verification(status=mark, verified_by=actor, verified_at=now_iso(),
                                                     golden=store.meta(version).verification.golden, reason=reason))

    # --- switching ----------------------------------------------------------------------
    def _plan(self, store: ModelStore, target: int, exclude: set[int]) -> SwitchPlan:
        keep = store.promotion_policy().keep_resident
        # Fallbacks stay resident only below the target (the highest loaded version serves).
        above = {v for v in store.versions() if v >= target}
        return plan_switch(store.resident(), target, self.fallbacks(store, exclude | above, limit=keep), keep)

    def _switch(self, store: ModelStore, target: int, op: str, action: str,
                exclude: set[int]) -> tuple[tuple[int, ...], float]:
        """Apply the plan's policies one by one; on a failed load, go back to the last good one.

        Returns the final policy and the monotonic time at which the target served.
        """
        plan = self._plan(store, target, exclude)
        switched_at = time.monotonic()
        previous = store.resident()
        for index, versions in enumerate(plan.steps):
            config = store.write_resident(versions)
            faults.checkpoint(f"{action}:policy_written")
            try:
                self.triton.load(store.name, to_json(config))
            except LoadFailed as exc:
                restored = store.write_resident(previous)
                self.triton.load(store.name, to_json(restored))
                reason = f"load of {label(target)} into {store.name} failed: {exc.reason}"
                if action == "promote" and index <= plan.switch_step:
                    self._reject(store, target, op, reason)
                self._record(store, action, FAILED, op, to_version=target, reason=reason)
                raise
            faults.checkpoint(f"{action}:loaded")
            if index == plan.switch_step:
                switched_at = time.monotonic()
                self._confirm_serving(store, target)
                self._record(store, action, STEP, op, to_version=target, details={"step": "switched",
                                                                                   "resident": list(versions)})
            previous = versions
        return plan.final, switched_at

    def _await_unloaded(self, store: ModelStore, versions: set[int]) -> None:
        """Triton may not see files change under a version it is still unloading."""
        try:
            if not self.triton.wait_unloaded(store.name, versions, self.settings.unload_wait_s):
                # Not in the policy any more, so a later load ignores the folder; a hung backend
                # (a crashed stub) must not hold the command.
                log.warning("%s %s still unloading after %.0fs", store.name, sorted(versions),
                            self.settings.unload_wait_s)
        except TritonUnreachable:
            pass  # a stopped server holds nothing

    def _confirm_serving(self, store: ModelStore, target: int) -> None:
        states = self.triton.states(store.name)
        ready = sorted(v for v, e in states.items() if e.state == "READY")
        if not ready or max(ready) != target:
            raise TritonError(f"{store.name}: expected v{target} to serve, Triton has READY {ready}")

    def _settle(self, store: ModelStore, version: int, action: str) -> SwitchResult:
        """Already served: only make sure Triton agrees with the disk (idempotent commands)."""
        self.sync_triton(store)
        return SwitchResult(store.name, action, version, version, store.resident(), 0.0, False)

    # --- repair and reconcile -----------------------------------------------------------
    def reconcile(self, model: str | None = None) -> list[str]:
        names = [self.resolve_model(model)] if model else self.repository.models()
        notes = []
        for name in names:
            store = self.repository.model(name)
            with self._locked(store):
                notes += self._repair(store)
                notes += self.sync_triton(store, strict=True)
        return notes

    def _repair(self, store: ModelStore) -> list[str]:
        """Finish or undo what an interrupted command left behind (disk first, then Triton)."""
        notes = []
        for leftover in store.staging_leftovers():
            from orchestrator.store.repository import remove_tree  # noqa: PLC0415

            remove_tree(leftover)
            notes.append(f"removed unfinished import staging {leftover.name}")
        unfinished = store.journal.read().unfinished()
        if unfinished is not None:
            notes.append(self._repair_operation(store, unfinished))
            if unfinished.action in SWITCH_ACTIONS:
                notes += self.sync_triton(store)  # when Triton is up; otherwise the next contact does it
        elif store.has_candidate_entry() and active_shadow(store) is None:
            self._drop_candidate(store, quiet=True)
            notes.append("removed a leftover candidate entry")
        for note in notes:
            log.warning("%s: %s", store.name, note)
        return notes

    def _repair_operation(self, store: ModelStore, started: Record) -> str:
        op, action, target = started.op, started.action, started.to_version
        if action == "import":
            if target is not None and (store.folder / str(target)).is_dir():
                self._record(store, action, REPAIRED, op, to_version=target, reason="filed before the interruption")
                return f"import of v{target} had completed"
            self._record(store, action, ABORTED, op, to_version=target, reason="interrupted before filing")
            return "an interrupted import left nothing behind"
        if action not in SWITCH_ACTIONS or target is None:
            self._record(store, action, ABORTED, op, reason="interrupted; nothing to repair")
            return f"closed an interrupted {action}"
        self._drop_candidate(store, quiet=True)
        if store.served() == target and (action == "rollback" or store.status(target) is VersionStatus.VERIFIED):
            # The switch itself was written: finish it (fallbacks may still be missing).
            plan = self._plan(store, target, exclude={started.from_version} if action == "rollback" else set())
            store.write_resident(plan.final)
            if action == "rollback" and started.from_version is not None:
                self._mark_rolled_back(store, started.from_version, started.reason or "rolled back",
                                       bool(started.details.get("quarantine")), started.actor)
            self._record(store, action, REPAIRED, op, from_version=started.from_version, to_version=target,
                         reason="interrupted after the switch; completed", details={"resident": list(plan.final)})
            return f"completed an interrupted {action} to v{target}"
        before = tuple(int(v) for v in started.details.get("resident_before", []))
        if before and store.resident() != before:
            store.write_resident(before)
        self._record(store, action, ABORTED, op, from_version=started.from_version, to_version=target,
                     reason="interrupted before the switch; previous versions restored",
                     details={"resident": list(store.resident())})
        return f"undid an interrupted {action} to v{target}; {label(store.served())} serves"

    def sync_triton(self, store: ModelStore, strict: bool = False) -> list[str]:
        """Load the on-disk policy into Triton when what Triton holds differs from it."""
        try:
            states = self.triton.states(store.name)
        except TritonUnreachable:
            if strict:
                raise
            return []
        want = set(store.resident())
        ready = {v for v, e in states.items() if e.state == "READY"}
        if ready == want:
            return []
        config = store.config()
        started = time.monotonic()
        op = new_op_id()
        served_before = max(ready) if ready else None
        try:
            self.triton.load(store.name, to_json(config))
        except LoadFailed as exc:
            self._record(store, "reconcile", FAILED, op, from_version=served_before, to_version=store.served(),
                         reason=exc.reason)
            raise
        self._record(store, "reconcile", SUCCEEDED, op, from_version=served_before, to_version=store.served(),
                     reason=f"Triton held {sorted(ready)}, disk says {sorted(want)}", duration_ms=_ms(started))
        return [f"loaded {sorted(want)} into Triton (it held {sorted(ready)})"]

    def history(self, model: str | None) -> History:
        return self.repository.model(self.resolve_model(model)).journal.read()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 2)


__all__ = ["ImportResult", "Orchestrator", "SwitchResult", "served_history"]
