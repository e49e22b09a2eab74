"""A real tritonserver on this machine, from the ``nvidia-pytriton`` wheel (CPU, python backend).

Used by the demo, the tests and the benchmarks. Free loopback ports, readiness polled
against a deadline, the server's log kept for failures, and the process group stopped
with SIGINT, then SIGKILL; the server also dies with its parent. A killed server's
python-backend shared memory is removed with it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from orchestrator.errors import EmbeddedTritonError
from orchestrator.triton.control import RESTRICTED_APIS

ARGS_FILE = Path(__file__).resolve().parent.parent / "triton_configs" / "server-cpu.args"
DEFAULT_ARGS = ["--model-control-mode=explicit", "--disable-auto-complete-config", "--strict-readiness=true"]


def pytriton_root() -> Path:
    try:
        import pytriton  # noqa: PLC0415 - optional: only the embedded server needs it
    except ImportError as exc:
        raise EmbeddedTritonError("nvidia-pytriton is not installed: pip install nvidia-pytriton") from exc
    return Path(pytriton.__file__).resolve().parent


def server_args(path: Path = ARGS_FILE) -> list[str]:
    if not path.exists():
        return list(DEFAULT_ARGS)
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def restricted_flags(admin_key: str) -> list[str]:
    """Triton's flags locking ``RESTRICTED_APIS`` behind ``admin_key``, over HTTP and gRPC alike."""
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:admin-key={admin_key}",
            f"--grpc-restricted-protocol={apis}:admin-key={admin_key}"]


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def prepare_backends(dest: Path) -> Path:
    """A writable copy of the wheel's backends with the stub for this Python next to the backend."""
    root = pytriton_root() / "tritonserver"
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.exists():
        raise EmbeddedTritonError(f"the wheel has no python backend stub for Python {sys.version.split()[0]}")
    if not (dest / "python" / stub.name).exists():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(root / "backends", dest)
        shutil.copy2(stub, dest / "python" / stub.name)
    return dest


def _die_with_parent() -> None:
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedTriton:
    def __init__(self, repository: Path, workdir: Path, load_models: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = (), ports: tuple[int, int, int] | None = None,
                 admin_key: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.repository = repository.resolve()
        # Extra environment variables for the server, inherited by its python backend stubs (measured:
        # tests/integration/test_sample_hardware.py); e.g. the device's hardware for the sample's faults.
        self.env = dict(env or {})
        self.admin_key = admin_key  # when set, the RESTRICTED_APIS need it (as on the Jetson)
        self.workdir = workdir
        self.load_models = load_models
        self.extra_args = extra_args
        http, grpc, metrics = ports or free_ports(3)
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "tritonserver.log"
        # Each server on a machine needs its own shared-memory names; the dash ends the prefix,
        # so one server's regions never match another's (port 4000 vs 40001).
        self.shm_prefix = f"orch{os.getpid()}p{self.http_port}-"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        backends = prepare_backends(self.workdir / "backends")
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *server_args(),
            *self.extra_args,
        ]
        if not any(arg.startswith("--trace-config=triton,file=") for arg in cmd):
            # Shadow traffic reads per-request traces from here (tracing itself stays OFF by default).
            (self.workdir / "traces").mkdir(parents=True, exist_ok=True)
            cmd.append(f"--trace-config=triton,file={self.workdir / 'traces' / 'trace.json'}")
        cmd += [f"--load-model={name}" for name in self.load_models]
        if self.admin_key:
            cmd += restricted_flags(self.admin_key)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = pytriton_root().parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        # The python stub imports numpy/onnxruntime from this environment, not the base interpreter.
        site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        paths = [*site, *env.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if p)
        env.update(self.env)
        return env

    def start(self, timeout_s: float = 60.0) -> EmbeddedTriton:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        # preexec_fn: the server must die with us (PDEATHSIG); it runs
                                        # before any exec and touches no Python locks.
                                        env=self.environment(), preexec_fn=_die_with_parent)  # noqa: PLW1509
        log.close()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedTritonError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise EmbeddedTritonError(f"tritonserver not ready after {timeout_s:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._remove_shared_memory()  # after a crash or the SIGKILL, nobody else will

    def kill(self) -> None:
        """Like a power cut: no chance to unload anything (a throwaway server needs none)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        # A server that did not unload leaves its stubs' regions in /dev/shm (1 MiB and more
        # each); nobody else uses names with this prefix.
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
