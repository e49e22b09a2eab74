"""Labels against a real Triton, as users drive them: `orchestrate label` in a subprocess, the watcher's
read-only labels API, and a tritonclient client that routes by the label's version (the README's example)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from orchestrator.daemons.watch import serve_metrics
from orchestrator.sample import Variant, golden_set
from orchestrator.triton.embedded import free_ports

from .conftest import MODEL, Stack
from .watchkit import wait_for, watching

pytestmark = pytest.mark.triton


def test_a_client_follows_a_label_through_the_watchers_api(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    stack.triton().load(MODEL)  # absorb Triton's one reload after start (see test_promote)
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    labelled = stack.cli("label", "classifier", "ab-control", "v1")
    assert labelled.returncode == 0, labelled.stderr
    assert labelled.stdout.strip() == "label ab-control -> v1; labels: ab-control v1, stable v2"
    refused = stack.cli("label", "classifier", "canary", "v3")
    assert refused.returncode == 2 and "has no version v3" in refused.stderr

    with watching(stack) as daemon:
        port = free_ports(1)[0]
        serve_metrics(daemon.registry, port, "127.0.0.1", daemon)
        base = f"http://127.0.0.1:{port}/api/v1/models/{MODEL}/labels"
        assert requests.get(f"{base}/ab-control", timeout=5).json() == {
            "model": MODEL, "label": "ab-control", "version": 1, "ready": True}
        assert requests.get(base, timeout=5).json()["labels"] == {
            "ab-control": {"version": 1, "ready": True}, "stable": {"version": 2, "ready": True}}
        missing = requests.get(f"{base}/canary", timeout=5)
        assert missing.status_code == 404 and missing.json()["labels"] == ["ab-control", "stable"]
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/models/nosuch/labels", timeout=5).status_code == 404
        assert requests.post(f"{base}/stable", timeout=5).status_code == 405
        assert "orchestrator_served_version" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert wait_for(lambda: daemon.registry.get_sample_value(
            "orchestrator_version_label", {"model": MODEL, "label": "ab-control"}) == 1, 10)

        # The README's client: ask the label's version, then name that version in the request.
        label = requests.get(f"{base}/ab-control", timeout=5).json()
        client = httpclient.InferenceServerClient(stack.server.url.split("://", 1)[1])
        image = golden_set()[0][:1].astype(np.float32)
        inputs = [httpclient.InferInput("IMAGE", list(image.shape), "FP32")]
        inputs[0].set_data_from_numpy(image)
        answer = client.infer(MODEL, inputs, model_version=str(label["version"]))
        assert answer.get_response()["model_version"] == "1"
        assert client.infer(MODEL, inputs).get_response()["model_version"] == "2"  # unversioned: stable
        client.close()

    rolled = stack.cli("rollback", "--to", "ab-control")
    assert rolled.returncode == 0, rolled.stderr
    assert stack.served_by_triton() == 1
    status = stack.cli("status", "--json")
    rows = {r["version"]: r["labels"] for r in json.loads(status.stdout)[0]["versions"]}
    assert rows[1] == ["ab-control", "stable"]
