"""The API and the coordinator never load torch or transformers (about 200 MB each): only the shard nodes (and
model preparation) compute with tensors; the coordinator relays hidden states as bytes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("module", ["api.main", "api.__main__", "coordinator.__main__"])
def test_service_imports_no_torch(module: str) -> None:
    check = (f"import sys, {module}; heavy = sorted({{'torch', 'transformers', 'numpy'}} & set(sys.modules)); "
             "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{module} imports {done.stdout.strip()} {done.stderr[-2000:]}"
