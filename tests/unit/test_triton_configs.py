"""The shipped Triton configs parse with Triton's schema and agree with the CPU sample's contract."""

from pathlib import Path

from orchestrator.store.modelconfig import contract, parse_config, primary_file, version_policy
from orchestrator.triton.embedded import server_args

ROOT = Path(__file__).resolve().parents[2]


def test_jetson_config_serves_the_same_contract_as_a_tensorrt_plan():
    cpu = parse_config((ROOT / "model_repository/classifier/config.pbtxt").read_text())
    jetson = parse_config((ROOT / "triton_configs/jetson/classifier/config.pbtxt").read_text())
    assert jetson.platform == "tensorrt_plan" and primary_file(jetson) == "model.plan"
    assert contract(jetson) == contract(cpu)
    assert version_policy(jetson).kind == "specific"


def test_server_flags_run_in_explicit_mode_without_auto_complete():
    for name in ("server-cpu.args", "server-jetson.args"):
        flags = server_args(ROOT / "triton_configs" / name)
        assert "--model-control-mode=explicit" in flags
        assert "--disable-auto-complete-config" in flags
        assert all(flag.startswith("--") for flag in flags)
