"""Optional and heavy dependencies stay out of `import edgecompress` and `edgecompress --help`."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_is_light():
    code = ("import sys, edgecompress, edgecompress.cli, edgecompress.errors, edgecompress.io\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'sklearn', 'matplotlib',"
            " 'torch_pruning') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_runs_without_heavy_imports():
    code = ("import sys\n"
            "from edgecompress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'help imported torch'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
