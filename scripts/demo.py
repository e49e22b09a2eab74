#!/usr/bin/env python3
"""The end-to-end scenario on an embedded CPU Triton, through the real ``orchestrate`` CLI.

Works on a copy of model_repository/ (``--in-place`` uses the folder itself) so the sample
stays as committed. Every step is a command a user would type; each must succeed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.sample import Variant, write_sample_package  # noqa: E402
from orchestrator.sample.detector import DetectorVariant, write_detector_package  # noqa: E402
from orchestrator.triton.embedded import EmbeddedTriton  # noqa: E402

# The classifier, and the detector's ensemble with its steps (Triton would load the steps with it).
LOADED = ("classifier", "detector_pre", "detector", "detector_nms", "detection")


def orchestrate(env: dict[str, str], *args: str) -> None:
    print(f"\n$ orchestrate {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT, check=False)
    print(f"  (exit {result.returncode}, {time.monotonic() - started:.2f} s)", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo failed at: orchestrate {' '.join(args)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--in-place", action="store_true", help="run on model_repository/ itself")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-demo-"))
    repository, state = ROOT / "model_repository", ROOT / "orchestrator_state"
    if not args.in_place:
        shutil.copytree(repository, work / "model_repository")
        shutil.copytree(state, work / "orchestrator_state")
        repository, state = work / "model_repository", work / "orchestrator_state"
    package = write_sample_package(work / "classifier-better", Variant.BETTER)
    detector = write_detector_package(work / "detector-better", DetectorVariant.BETTER)
    print(f"repository: {repository}\nstate: {state}\nnew packages: {package}, {detector}")
    env = dict(os.environ, ORCH_REPOSITORY=str(repository), ORCH_STATE_DIR=str(state), ORCH_ACTOR="demo")
    # The build side signs; the device trusts the build key's public half.
    orchestrate(env, "keygen", "--out", str(work / "keys"), "--name", "builder")
    (state / "trusted_keys").mkdir(exist_ok=True)
    shutil.copy(work / "keys" / "builder.pub", state / "trusted_keys" / "builder.pub")
    orchestrate(env, "sign", str(package), "--key", str(work / "keys" / "builder.key"))
    orchestrate(env, "sign", str(detector), "--key", str(work / "keys" / "builder.key"))
    # Locked model-control API, as on a device: only holders of the key may load or unload.
    admin_key = secrets.token_urlsafe(24)
    server = EmbeddedTriton(repository, work / "triton", load_models=LOADED, admin_key=admin_key)
    server.start()
    print(f"embedded Triton ready at {server.url} (log: {server.log_path})")
    env["ORCH_TRITON_URL"] = server.url
    env["ORCH_ADMIN_KEY"] = admin_key
    try:
        orchestrate(env, "status")
        orchestrate(env, "import", str(package))
        orchestrate(env, "promote", "classifier", "v2")
        # The detector: clients call the ensemble "detection"; the candidate is judged through a copy of it.
        orchestrate(env, "import", str(detector))
        orchestrate(env, "promote", "detector", "v2")
        orchestrate(env, "status")
        orchestrate(env, "rollback", "classifier")
        orchestrate(env, "rollback", "detector")
        orchestrate(env, "status")
        orchestrate(env, "history", "classifier")
        orchestrate(env, "history", "detector")
    finally:
        server.stop()
        print("\nembedded Triton stopped")
    print("demo complete")


if __name__ == "__main__":
    main()
