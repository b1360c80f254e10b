"""One process per run directory (issue 16.3): a second process on the same --out fails fast with
exit 2 naming the holder; a SIGKILLed run's lock and temp files are cleaned by the next run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecompress.errors import RunDirError
from edgecompress.runlock import RunDirLock, lock_path, remove_stale_temp_files, run_dir_lock
from tests.conftest import REPO, run_cli

HOLD = ("import sys, time\n"
        "from edgecompress.runlock import run_dir_lock\n"
        "with run_dir_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(300)\n")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "run"
    with run_dir_lock(out) as held:
        holder = json.loads(lock_path(out).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunDirError) as info:
            RunDirLock(out).acquire()
        assert f"pid {os.getpid()}" in str(info.value) and socket.gethostname() in str(info.value)
        assert held.path == lock_path(out)
    assert not lock_path(out).exists(), "the lock file outlived its run"
    with run_dir_lock(out):  # free again
        pass


def test_second_process_fails_fast_naming_the_holder(write_recipe, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        start = time.perf_counter()
        result = run_cli("run", str(write_recipe()), "--out", str(out))
        seconds = time.perf_counter() - start
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"pid {holder.pid}" in result.stderr and socket.gethostname() in result.stderr
    assert "in use by another edgecompress run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "the refused run wrote into the directory"
    assert seconds < 120, f"refusal took {seconds:.0f} s"


def test_stale_lock_of_a_killed_holder_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == holder.pid  # left behind
    with run_dir_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_only_our_temp_file_names_are_removed(tmp_path):
    keep = ["student.onnx", "notes.tmp", ".hidden", "x.tmp.onnx", ".a.SHORT.tmp.onnx"]
    ours = [".student.k3j_h5g6.tmp.onnx", ".stage.abcdefgh.tmp.json",
            ".teacher.0123abcd.tmp.onnx.data", ".results.zzzzzzzz.tmp"]
    (tmp_path / "export").mkdir()
    for name in keep + ours:
        (tmp_path / "export" / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(keep)


@pytest.mark.slow
def test_sigkilled_run_is_resumed_with_its_lock_and_temp_files_cleaned(write_recipe, tmp_path):
    recipe = write_recipe({"stages": {"finetune": {"epochs": 1}, "distill": {"enabled": False}}})
    out = tmp_path / "run"
    env = {**os.environ, "CI": "true"}
    first = subprocess.Popen([sys.executable, "-m", "edgecompress", "run", str(recipe), "--out",
                              str(out)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ((out / "run.json").is_file() and lock_path(out).is_file()):
        assert first.poll() is None and time.time() < deadline, "the run never started"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == first.pid
    leftover = out / "export" / ".student.k3j4h5g6.tmp.onnx"  # as a kill during export leaves
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half an onnx file")

    second = run_cli("run", str(recipe), "--out", str(out))
    assert second.returncode in (0, 1), second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and "no longer running" in second.stderr
    assert not leftover.exists(), "the temp file of the killed write survived"
    assert not lock_path(out).exists()
    assert (out / "report.json").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
