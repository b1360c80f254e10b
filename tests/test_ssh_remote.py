"""Remote benchmarking over ssh, for real: an OpenSSH server started on 127.0.0.1 by the test.

The "board" is this machine reached through sshd with its own host key (verified through a
known_hosts file, StrictHostKeyChecking=yes) and a throwaway client key; the remote command is
this checkout's Python, so the agent measures a real ONNX Runtime engine and the numbers travel
back over ssh. Needs Debian's openssh-server (``apt-get install -y openssh-server``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.remote.ssh import HostKeyError, RemoteUnreachable, SSHRunner
from edgecompress.targets import parse_profile, profile_availability
from tests.conftest import run_cli

SSHD = Path("/usr/sbin/sshd")

pytestmark = pytest.mark.skipif(
    not SSHD.is_file() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH: /usr/sbin/sshd (apt-get install -y openssh-server) and ssh, "
           "ssh-keygen (openssh-client)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return (path.with_suffix(".pub") if path.suffix else Path(f"{path}.pub")).read_text()


class Sshd:
    """Connection details of the test server."""

    def __init__(self, root: Path, port: int, known_hosts: Path, key: Path) -> None:
        self.root, self.port, self.known_hosts, self.key = root, port, known_hosts, key

    def connection(self, **extra) -> dict:
        return {"kind": "ssh", "host": "127.0.0.1", "port": self.port,
                "user": _user(), "identity_file": str(self.key),
                "known_hosts": str(self.known_hosts), "ssh_config": "/dev/null",
                "connect_timeout": 5, "timeout": 300, "python": [sys.executable],
                "workdir": str(self.root / "board work; dir"), **extra}

    def profile(self, **extra) -> dict:
        conn = extra.pop("connection", {})
        return {"version": 1, "name": "ssh-board", "backend": "onnxruntime",
                "precision": "fp32", "threads": 1, "warmup": 2, "runs": 50,
                "connection": self.connection(**conn), **extra}


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(root / "host_key")
    client_pub = _keygen(root / "client_key")
    (root / "authorized_keys").write_text(client_pub)
    os.chmod(root / "authorized_keys", 0o600)
    port = _free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    config = root / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = open(root / "sshd.log", "wb")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()}")
            time.sleep(0.1)
    yield Sshd(root, port, root / "known_hosts", root / "client_key")
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _runner(sshd: Sshd, **overrides) -> SSHRunner:
    conn = sshd.connection()
    kw = {"host": conn["host"], "port": conn["port"], "user": conn["user"],
          "identity_file": conn["identity_file"], "known_hosts": conn["known_hosts"],
          "ssh_config": "/dev/null", "connect_timeout": 5, "timeout": 60}
    return SSHRunner(**{**kw, **overrides})


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A small real CNN exported to ONNX (the artifact the board runs)."""
    import torch

    from edgecompress.export.onnx import export_onnx
    from edgecompress.models.tiny import build_builtin

    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.25, depth=1)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(model, torch.randn(2, 1, 8, 8), path)
    return path


def test_commands_are_quoted(sshd, tmp_path):
    runner = _runner(sshd)
    canary = tmp_path / "PWNED"
    nasty = f"a b; touch {canary} $(touch {canary}) `touch {canary}` 'q\" && echo hi"
    proc = runner.run(["printf", "%s", nasty])
    assert proc.stdout.decode() == nasty
    assert not canary.exists()


def test_file_names_with_shell_characters_round_trip(sshd, tmp_path):
    runner = _runner(sshd)
    canary = tmp_path / "PWNED"
    name = f"my model; rm -rf nothing; touch {canary.name} $(id).onnx"
    local = tmp_path / name
    local.write_bytes(b"\x00weights\xff")
    remote_dir = str(sshd.root / f"dir with space; touch {canary}")
    runner.upload({name: local}, remote_dir)
    assert (Path(remote_dir) / name).read_bytes() == b"\x00weights\xff"
    (back,) = runner.download(remote_dir, [name], tmp_path / "back")
    assert back.read_bytes() == b"\x00weights\xff"
    runner.remove(remote_dir)
    assert not Path(remote_dir).exists() and not canary.exists()
    with pytest.raises(ConfigError, match="plain file name"):
        runner.upload({"../escape.onnx": local}, remote_dir)


def test_wrong_host_key_is_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    pub = _keygen(other)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(pub.split()[:2])}\n")
    with pytest.raises(HostKeyError, match="host key not verified"):
        _runner(sshd, known_hosts=str(known)).check()
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as info:
        _runner(sshd, known_hosts=str(empty)).check()
    assert info.value.exit_code == 2


def test_unreachable_host_is_a_clear_error(sshd):
    closed = _free_port()
    with pytest.raises(RemoteUnreachable, match=r"127\.0\.0\.1.*cannot connect") as info:
        _runner(sshd, port=closed).check()
    assert info.value.exit_code == 3
    profile = parse_profile(sshd.profile(connection={"port": closed}), "p.yaml")
    ok, reasons = profile_availability(profile)
    assert not ok and any("not reachable on port" in r for r in reasons)
    ok, reasons = profile_availability(parse_profile(sshd.profile(), "p.yaml"))
    assert ok, reasons


def test_remote_benchmark_of_an_onnxruntime_engine(sshd, onnx_model):
    from edgecompress.backends import get_backend
    from edgecompress.remote.artifact import remote_benchmark
    from edgecompress.remote.bench import RemoteTarget

    profile = parse_profile(sshd.profile(), "p.yaml")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=40)
    target = RemoteTarget(profile, get_backend("onnxruntime"))
    assert target.availability() == (True, "")
    measured = remote_benchmark(profile, onnx_model, x, y, warmup=2, runs=50, batch_size=1)
    lat = measured["latency_ms"]
    assert lat["runs"] == 50 and 0 < lat["min"] <= lat["p50"] <= lat["p99"]
    assert len(measured["samples_ms"]) == 50
    assert measured["logits"].shape == (40, 10)
    # The remote logits are the model's: compare with a local session on the same inputs.
    runner = get_backend("onnxruntime").load(onnx_model)
    np.testing.assert_allclose(measured["logits"], runner.run(x), rtol=1e-4, atol=1e-5)
    assert measured["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(measured["logits"], 1) == y)))
    remote = measured["remote"]
    assert remote["kind"] == "ssh" and remote["host"] == "127.0.0.1"
    assert remote["port"] == sshd.port and remote["device"]["hostname"] == socket.gethostname()
    assert not any((sshd.root / "board work; dir").iterdir())  # job directory cleaned up


def test_remote_without_edgecompress_is_a_reason(sshd):
    from edgecompress.backends import get_backend
    from edgecompress.remote.bench import RemoteTarget

    profile = parse_profile(sshd.profile(connection={"python": ["/bin/false"]}), "p.yaml")
    ok, reason = RemoteTarget(profile, get_backend("onnxruntime")).availability()
    assert not ok and "edgecompress is not usable on" in reason and "/bin/false" in reason


def test_pipeline_target_on_an_ssh_profile(sshd, write_recipe, tmp_path):
    """A recipe whose target is an ssh profile: the engine is timed on the 'board' and the
    report says so."""
    profiles = tmp_path / "targets"
    profiles.mkdir()
    (profiles / "ssh-board.yaml").write_text(yaml.safe_dump(sshd.profile()))
    recipe = write_recipe({"targets": [{"profile": "ssh-board", "runs": 50, "warmup": 2}]})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out),
                     env={"EDGECOMPRESS_TARGETS_DIR": str(profiles)})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    (target,) = report["targets"]
    assert target["status"] == "ok", target
    assert target["remote"]["kind"] == "ssh" and target["remote"]["host"] == "127.0.0.1"
    assert target["remote"]["port"] == sshd.port
    assert target["latency_ms"]["runs"] == 50 and target["latency_ms"]["p50"] > 0
    assert target["teacher_latency_ms"]["p50"] > 0 and 0 <= target["accuracy"] <= 1
    assert target["parity"]["top1_agreement"] > 0.9
    # Teacher and student timed on the board in the same interleaved rounds, as locally.
    assert target["timing"]["scheme"] == "interleaved"
    assert target["timing"]["where"] == "remote device" and target["timing"]["rounds"] > 1
    assert sorted(target["timing"]["engines"]) == ["student", "teacher"]
    assert target["speedup_vs_teacher"] > 0 and "speedup_noisy" in target
    assert target["speedup_vs_teacher_cpu"] > 0


def test_ssh_profile_rejects_ssh_fields_elsewhere():
    with pytest.raises(ConfigError, match="identity_file"):
        parse_profile({"version": 1, "name": "x", "backend": "onnxruntime",
                       "connection": {"kind": "local", "identity_file": "/k"}}, "p.yaml")
    prof = parse_profile({"version": 1, "name": "x", "backend": "onnxruntime",
                          "connection": {"kind": "ssh", "host": "h", "python": "/opt/py -X dev"}},
                         "p.yaml")
    assert prof.connection.python == ["/opt/py", "-X", "dev"]


def test_missing_identity_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="identity file not found"):
        SSHRunner(host="127.0.0.1", identity_file=str(tmp_path / "nope")).base_args()
    assert BackendUnavailable.exit_code == 3


def test_bench_artifact_remote_writes_the_report(sshd, onnx_model, tmp_path):
    from edgecompress.remote.artifact import bench_artifact_remote

    profile = parse_profile(sshd.profile(input_shape=[1, 1, 8, 8]), "p.yaml")
    out = tmp_path / "bench"
    report = bench_artifact_remote(onnx_model, profile, out, data="digits")
    saved = json.loads((out / "report.json").read_text())
    (entry,) = saved["targets"]
    assert entry["remote"]["host"] == "127.0.0.1" and entry["latency_ms"]["runs"] == 50
    assert 0 <= entry["accuracy"] <= 1 and saved["dataset"]["name"] == "digits"
    assert report["gate"]["passed"] is True


STAND_IN = """#!/bin/sh
# Stand-in for NVIDIA's trtexec (TensorRT cannot run here): records its arguments, writes the
# files the real tool writes, and prints a real TensorRT 10 summary (tests/data).
printf '%s\\n' "$@" > "{args_file}"
echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'
[ "$1" = "--help" ] && exit 0
for a in "$@"; do
  case "$a" in
    --saveEngine=*) printf 'plan' > "${{a#--saveEngine=}}" ;;
    --exportTimes=*) {python} -c "{times_py}" "${{a#--exportTimes=}}" ;;
  esac
done
cat "{summary}"
echo '&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec'
"""
TIMES_PY = ("import json,sys; json.dump([dict(computeMs=0.1 + i / 1000) "
            "for i in range(50)], open(sys.argv[1], 'w'))")


def test_trtexec_runner_over_ssh(sshd, onnx_model, tmp_path):
    """The trtexec path end to end over ssh, with a stand-in for the tool itself."""
    from edgecompress.remote.artifact import remote_benchmark

    args_file = tmp_path / "args.txt"
    script = tmp_path / "trtexec"
    script.write_text(STAND_IN.format(args_file=args_file, python=sys.executable, times_py=TIMES_PY,
                                      summary=Path(__file__).parent / "data" /
                                      "trtexec_trt10_x86.txt"))
    script.chmod(0o755)
    profile = parse_profile(sshd.profile(backend="tensorrt", precision="fp16",
                                         build_options={"dla_core": 1},
                                         connection={"runner": "trtexec",
                                                     "trtexec": str(script)}), "p.yaml")
    ok, reasons = profile_availability(profile)
    assert ok, reasons  # no TensorRT here: the board builds the engine
    x = np.zeros((1, 1, 8, 8), np.float32)
    measured = remote_benchmark(profile, onnx_model, x, None, warmup=2, runs=50, batch_size=1)
    args = args_file.read_text().split("\n")
    assert {"--onnx=model.onnx", "--saveEngine=model.engine", "--fp16", "--useDLACore=1",
            "--allowGPUFallback", "--iterations=50", "--exportTimes=times.json"} <= set(args)
    assert any(a.startswith("--shapes=") and a.endswith(":1x1x8x8") for a in args)
    lat = measured["latency_ms"]
    assert lat["runs"] == 50 and lat["min"] == pytest.approx(0.1)
    assert lat["source"] == "trtexec GPU Compute Time" and lat["throughput_qps"] == 130.298
    assert measured["accuracy"] is None and measured["logits"] is None
    assert measured["remote"]["device"]["tensorrt"] == "10.3.0"
    assert measured["remote"]["built_on_device"] is True


def test_benchmark_many_builds_on_the_board_and_interleaves(sshd, onnx_model, tmp_path,
                                                            monkeypatch):
    """Two engines in one agent run: the staged (on-device build) path of TensorRT, exercised
    with ONNX Runtime's real build on the 'board', and a plain artifact; same-round ratios."""
    from edgecompress.backends import get_backend
    from edgecompress.remote.bench import RemoteTarget

    profile = parse_profile(sshd.profile(), "p.yaml")
    target = RemoteTarget(profile, get_backend("onnxruntime"))
    monkeypatch.setattr(RemoteTarget, "builds_on_device", property(lambda self: True))
    staged = target.build(onnx_model, tmp_path / "engine", precision="fp32")
    assert not staged.exists(), "built on the board, fetched back by the benchmark"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=24)
    measured, speed = target.benchmark_many({"teacher": onnx_model, "student": staged}, x, y,
                                            warmup=2, runs=40)
    assert staged.is_file(), "the engine built on the board was fetched"
    assert speed["timing"]["scheme"] == "interleaved" and speed["speedup_vs_teacher"] > 0
    for name in ("teacher", "student"):
        assert measured[name]["latency_ms"]["runs"] == 40
        assert measured[name]["logits"].shape == (24, 10)
    np.testing.assert_allclose(measured["student"]["logits"], measured["teacher"]["logits"],
                               rtol=1e-4, atol=1e-5)  # the same model, built on the board
    assert measured["student"]["remote"]["build_seconds"] >= 0
    assert not any((sshd.root / "board work; dir").iterdir())  # job directory cleaned up


@pytest.mark.slow
def test_text_target_on_an_ssh_profile(sshd, tmp_path):
    """Issue 12: a text student reaches an ssh device through the shared bench stage. Token ids
    and masks travel as a multi-input feed, and the static INT8 engine's description (the
    graph optimizers it runs without) travels with it, so the board scores it as this machine
    does."""
    pytest.importorskip("transformers", reason="transformers not installed (extra: text)")
    from tests.text_fixtures import tiny_bert_dir, write_sentiment_csv

    profiles = tmp_path / "targets"
    profiles.mkdir()
    (profiles / "ssh-board.yaml").write_text(yaml.safe_dump(sshd.profile(precision="int8")))
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=160)
    teacher = tiny_bert_dir(tmp_path / "teacher", layers=2, hidden=32, heads=4, ffn=64)
    timing = {"seq_len": 24, "runs": 5, "warmup": 1, "min_runs": 5}
    recipe = {
        "version": 1, "task": "text-classification", "name": "tiny-ssh",
        "data": {"path": str(data), "labels": ["neg", "pos"], "max_length": 24},
        "teacher": {"path": str(teacher), "finetune": {"epochs": 6, "lr": 0.003,
                                                       "batch_size": 16}},
        "student": {"keep_layers": [1]},
        "distill": {"epochs": 2, "lr": 0.002, "batch_size": 16},
        "quant": {"method": "ptq_static", "calibration_samples": 32,
                  "teacher_reference": False},
        "targets": [{"name": "here", "precision": "int8", **timing},
                    {"profile": "ssh-board", **timing}],
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--out", str(out),
                     env={"EDGECOMPRESS_TARGETS_DIR": str(profiles)})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    here, board = report["targets"]
    assert board["status"] == "ok", board
    assert board["remote"]["kind"] == "ssh" and board["remote"]["port"] == sshd.port
    assert board["seq_len"] == 24 and board["latency_ms"]["input_shape"] == [1, 24]
    assert board["timing"]["scheme"] == "interleaved" and board["timing"]["where"] == \
        "remote device"
    # The board ran the same engine on the same texts: same decisions as here.
    assert board["accuracy"] == pytest.approx(here["accuracy"], abs=0.02)
    assert board["parity"]["top1_agreement"] == pytest.approx(
        here["parity"]["top1_agreement"], abs=0.02)
    assert board["int8_kernels"] == here["int8_kernels"] and board["int8_kernels"]
