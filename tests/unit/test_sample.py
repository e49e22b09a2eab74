"""The committed sample repository is exactly what the generator writes."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sample_repository_is_reproducible(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_models.py"), "repository", "--out",
                    str(tmp_path)], check=True, capture_output=True)
    committed = ROOT / "model_repository" / "classifier"
    for relative in ["config.pbtxt", "policy.yaml", "golden/inputs.npy", "golden/labels.npy", "1/model.onnx",
                     "1/model.py", "1/meta.yaml"]:
        assert filecmp.cmp(committed / relative, tmp_path / "classifier" / relative, shallow=False), relative
