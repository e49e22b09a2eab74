"""triton-orchestrator: file, verify, promote and roll back model versions on a running Triton."""

__version__ = "0.1.0"
