"""The committed sample repository is exactly what the generator writes."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sample_repository_is_reproducible(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_models.py"), "repository", "--out",
                    str(tmp_path / "model_repository")], check=True, capture_output=True)
    for relative in ["model_repository/classifier/config.pbtxt", "model_repository/classifier/1/model.onnx",
                     "model_repository/classifier/1/model.py", "model_repository/classifier/1/meta.yaml",
                     "orchestrator_state/classifier/policy.yaml", "orchestrator_state/classifier/golden/inputs.npy",
                     "orchestrator_state/classifier/golden/labels.npy"]:
        assert filecmp.cmp(ROOT / relative, tmp_path / relative, shallow=False), relative
