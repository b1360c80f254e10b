"""Shared fixtures: a tiny recipe that runs the whole pipeline in seconds on 2 cores."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import edgecompress  # noqa: F401 - installs the torchvision import fix (transformers imports it)

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE: dict[str, Any] = {
    "version": 1,
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"source": "digits", "limit": 600, "calibration_samples": 64},
    "teacher": {"kind": "builtin", "family": "resnet", "width": 0.5, "depth": 1},
    "student": {"kind": "builtin", "family": "resnet", "width": 0.25, "depth": 1},
    "stages": {
        "finetune": {"epochs": 3, "lr": 0.01},
        # augment pinned to none: the tests' budgets and thresholds predate the mixup default
        "distill": {"epochs": 3, "lr": 0.01, "baseline": False, "augment": "none"},
    },
    "targets": [{"name": "cpu", "backend": "onnxruntime", "threads": 1, "warmup": 2,
                 "runs": 50}],
}


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write the tiny recipe (with overrides) to a YAML file and return its path."""
    def write(overrides: dict[str, Any] | None = None, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_update(TINY_RECIPE, overrides or {})))
        return path
    return write


def run_main(*args: Any) -> tuple[int, str]:
    """The CLI in this process: (exit code, stdout + stderr)."""
    from edgecompress.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue() + err.getvalue()


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m edgecompress ARGS`` in a subprocess and capture its output."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)
