"""``python -m orchestrator.daemons.shadow_main STATE_FOLDER``: the worker ``orchestrate shadow start`` spawns."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from orchestrator.daemons.shadow_worker import run_detached
from orchestrator.errors import OrchestratorError
from orchestrator.settings import read_admin_key

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = read_admin_key()
    except OrchestratorError as exc:  # one line in the worker's log, like the CLI's, not a traceback
        logging.getLogger("shadow").error("%s", exc)
        sys.exit(exc.exit_code)
    sys.exit(run_detached(Path(sys.argv[1]), key))
