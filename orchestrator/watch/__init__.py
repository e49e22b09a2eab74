"""Watching the served version: rules and verdicts (pure), probes and metrics (I/O), the daemon."""
