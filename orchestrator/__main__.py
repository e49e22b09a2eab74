from orchestrator.cli.main import entrypoint

entrypoint()
