"""One Triton contract, two backends: a real embedded tritonserver and the in-memory twin.

Both serve a private copy of the sample repository with three classifier versions: v1 (the
sample's), v2 (the BETTER variant) and v3 (the CORRUPT variant, whose load fails), a model that
is never loaded, and a model ``failing`` whose v1 runs the sample's network under a runner whose
execute() raises on every request. Each backend sets up its own equivalent of that situation (the
twin cannot run a python model: its outputs come from onnxruntime on the same model.onnx, its v3
is declared failing and ``failing`` raising); the assertions in test_triton_contract.py are the
same for both.

One backend per module: the real server starts once (about 2 s with its first load), and
``triton`` puts it back to v1 alone before each test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from orchestrator.sample import Variant, golden_set, write_faulty_package, write_sample_package
from orchestrator.sample.twin_behaviour import SampleBackend
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton
from orchestrator.triton.protocol import TritonAPI
from orchestrator.triton.twin import Behaviour, TritonTwin

ROOT = Path(__file__).resolve().parents[2]
MODEL, SPARE = "classifier", "spare"  # SPARE is in the repository and never loaded
CANDIDATE = f"{MODEL}__candidate"
GOOD, NEW, BROKEN = 1, 2, 3
FAILING = "failing"  # a model whose every request fails in the backend
ADMIN_KEY = "contract-admin-key-0123456789"
IMAGES = golden_set()[0][:4]
WAIT_S = 15.0  # a python stub takes about 1.2 s to unload on the real server


def model_config(name: str, versions: tuple[int, ...] | None) -> model_config_pb2.ModelConfig:
    """The sample's config.pbtxt renamed, with ``specific`` versions (None: no version_policy)."""
    config = text_format.Parse((ROOT / "model_repository" / MODEL / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    config.name = name
    config.ClearField("version_policy")
    if versions is not None:
        config.version_policy.specific.versions.extend(versions)
    return config


def policy(*versions: int, model: str = MODEL) -> str:
    """The config JSON for ``load(model, config_json)`` serving ``versions``."""
    return json_format.MessageToJson(model_config(model, versions), preserving_proto_field_name=True, indent=None)


def build_repository(dest: Path, work: Path) -> Path:
    shutil.copytree(ROOT / "model_repository", dest)
    for version, variant in ((NEW, Variant.BETTER), (BROKEN, Variant.CORRUPT)):
        package = write_sample_package(work / variant.value, variant)
        # Staged under a name Triton ignores, then renamed in, as the store files a version.
        staging = dest / MODEL / f".staging-{version}"
        staging.mkdir()
        for name in ("model.onnx", "model.py", "meta.yaml"):
            shutil.copy2(package / name, staging / name)
        staging.rename(dest / MODEL / str(version))
    # The sample's own fault package, "errors" from the first request: its execute() raises, which Triton
    # 2.51 counts as failed requests (measured: fail_count, one execution, no inferences).
    failing = write_faulty_package(work / "errors", "errors", 0)
    (dest / FAILING / str(GOOD)).mkdir(parents=True)
    for name in ("model.onnx", "model.py", "fault.json"):
        shutil.copy2(failing / name, dest / FAILING / str(GOOD) / name)
    (dest / FAILING / "config.pbtxt").write_text(text_format.MessageToString(model_config(FAILING, (GOOD,))))
    shutil.copytree(dest / MODEL / str(GOOD), dest / SPARE / str(GOOD))
    (dest / SPARE / "config.pbtxt").write_text(text_format.MessageToString(model_config(SPARE, (GOOD,))))
    return dest


def onnx_behaviour(model: str, version: int, folder: Path | None) -> Behaviour:
    """What the sample's model.py does with the version's model.onnx, for the twin."""
    assert folder is not None
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda inputs: dict(zip(["LOGITS"], session.run(["LOGITS"], {"IMAGE": inputs["IMAGE"]}), strict=True))


def expected_logits(repository: Path, version: int, images: np.ndarray = IMAGES) -> np.ndarray:
    session = ort.InferenceSession(str(repository / MODEL / str(version) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["LOGITS"], {"IMAGE": images})[0]


@dataclass
class Backend:
    name: str
    repository: Path
    connect: Callable[[str | None], TritonAPI]  # a new client sending this admin key
    stop: Callable[[], None]  # no answer from the server until start
    start: Callable[[], None]  # back up, knowing only what it loads at start
    clients: list[TritonAPI] = field(default_factory=list)

    def client(self, key: str | None = ADMIN_KEY) -> TritonAPI:
        client = self.connect(key)
        self.clients.append(client)
        return client


def real_backend(tmp: Path) -> Iterator[Backend]:
    repository = build_repository(tmp / "model_repository", tmp / "packages")
    servers = [EmbeddedTriton(repository, tmp / "triton", load_models=(MODEL,), admin_key=ADMIN_KEY).start()]

    def start() -> None:
        old = servers[-1]
        servers.append(EmbeddedTriton(repository, tmp / "triton", load_models=(MODEL,), admin_key=ADMIN_KEY,
                                      ports=(old.http_port, old.grpc_port, old.metrics_port)).start())

    def stop() -> None:
        servers[-1].kill()  # like a power cut

    backend = Backend("real", repository, lambda key: Triton(servers[-1].url, key), stop, start)
    try:
        yield backend
    except BaseException:
        print(f"--- tritonserver log tail ---\n{servers[-1].log_tail()}")
        raise
    finally:
        for client in backend.clients:
            client.close()
        servers[-1].kill()  # throwaway: a clean SIGINT stop takes 3 s


def twin_backend(tmp: Path) -> Iterator[Backend]:
    repository = build_repository(tmp / "model_repository", tmp / "packages")
    # Latencies in real seconds, near the real server's, so that a second client sees a load in progress.
    twin = TritonTwin("contract", repository, admin_key=ADMIN_KEY, load_models=(MODEL,), unload_latency_s=0.3,
                      behaviour_for=onnx_behaviour)
    twin.configure(MODEL, NEW, load_latency_s=0.3)
    twin.configure(MODEL, BROKEN, load_error="Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : "
                                             "INVALID_PROTOBUF : Protobuf parsing failed.")
    # The same fault package, run as the simulated devices run it.
    twin.configure(FAILING, GOOD, behaviour=SampleBackend()(FAILING, GOOD, repository / FAILING / str(GOOD)))
    yield Backend("twin", repository, twin.with_key, twin.stop, twin.start)


@pytest.fixture(scope="module", params=[pytest.param("real", marks=pytest.mark.triton), "twin"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    factory = real_backend if request.param == "real" else twin_backend
    yield from factory(tmp_path_factory.mktemp(f"contract-{request.param}"))


@pytest.fixture
def triton(backend: Backend) -> TritonAPI:
    """A client with the admin key, the server serving v1 alone and nothing on its way out."""
    client = backend.client()
    if not client.is_live():
        backend.start()
    client.load(MODEL, policy(GOOD))
    assert client.wait_unloaded(MODEL, {NEW}, WAIT_S)
    return client


@pytest.fixture(scope="module")
def expected(backend: Backend) -> dict[int, np.ndarray]:
    """LOGITS for IMAGES as each version's model.onnx computes them outside Triton."""
    return {v: expected_logits(backend.repository, v) for v in (GOOD, NEW)}
