"""A non-editable install ships what the CLI needs: the demo recipe and the target profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tracked files (no build/ or egg-info in the checkout)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=False).stdout.decode().split("\0")
    if not any(files):
        pytest.skip("not a git checkout: cannot list the tracked files to build from")
    for name in filter(None, files):
        target, origin = src / name, REPO / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            os.symlink(os.readlink(origin), target)
        elif origin.is_file():
            shutil.copy2(origin, target)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(out), str(src)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = out.glob("edgecompress-*.whl")
    return path


def test_wheel_ships_profiles_and_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "edgecompress" / "profiles").glob("*.yaml")}
    assert shipped and {f"edgecompress/profiles/{n}" for n in shipped} <= names
    assert "edgecompress/recipes/digits.yaml" in names


def test_installed_wheel_lists_and_resolves_profiles_from_elsewhere(wheel, tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                             "--target", str(site), str(wheel)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = elsewhere / "r.yaml"
    recipe.write_text("version: 1\ntargets:\n  - profile: x86-avx2\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGECOMPRESS_TARGETS_DIR"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    code = ("import sys, edgecompress; from edgecompress.cli import main; "
            "assert edgecompress.__file__.startswith(sys.argv[1]), edgecompress.__file__; "
            "sys.argv = ['edgecompress'] + sys.argv[2:]; main()")
    listed = subprocess.run([sys.executable, "-c", code, str(site), "targets"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert str(site) in listed.stdout and "x86-avx2-int8" in listed.stdout
    valid = subprocess.run([sys.executable, "-c", code, str(site), "validate", str(recipe)],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert valid.returncode == 0, valid.stderr[-2000:]
    assert "name: x86-avx2" in valid.stdout
