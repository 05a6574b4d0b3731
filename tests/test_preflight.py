"""What a run checks before any run folder exists, as `hpsearch validate` does: without torch."""

import subprocess
import sys

import pytest
import yaml

from hpsearch.errors import InputError
from hpsearch.preflight import check_device


def test_validating_a_spec_imports_no_torch(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "v",
                "device": "auto",
                "data": {"source": "sklearn:iris"},
                "search": {"trials": 4, "space": {"train.lr": {"low": 1e-3, "high": 1e-1}}},
            }
        )
    )
    code = (
        "import sys; from hpsearch.cli import app; from typer.testing import CliRunner; "
        f"result = CliRunner().invoke(app, ['validate', {str(spec)!r}]); "
        "print(result.exit_code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"]


def test_a_cuda_device_is_checked_where_there_is_none():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA is not available"):
        check_device("cuda")
    check_device("auto")
    check_device("cpu")
