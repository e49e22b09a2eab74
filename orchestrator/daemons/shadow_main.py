"""``python -m orchestrator.daemons.shadow_main STATE_FOLDER``: the worker ``orchestrate shadow start`` spawns."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from orchestrator.daemons.shadow_worker import run_detached
from orchestrator.settings import read_admin_key

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_detached(Path(sys.argv[1]), read_admin_key()))
