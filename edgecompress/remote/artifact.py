"""``edgecompress bench ARTIFACT --target <ssh profile>``: one already built artifact measured on
a board reached over ssh, through :class:`~edgecompress.remote.bench.RemoteTarget`, with the same
report files as a local benchmark."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import errors
from edgecompress.errors import ConfigError
from edgecompress.remote.bench import RemoteTarget
from edgecompress.targets import TargetProfile


def remote_benchmark(profile: TargetProfile, artifact: Path, x: np.ndarray,
                     y: np.ndarray | None, **timing: Any) -> dict[str, Any]:
    """Benchmark one already built artifact (``edgecompress bench`` on an ssh profile).

    ``timing``: ``warmup``, ``runs``, ``batch_size``, ``max_seconds``, ``min_runs``. An ONNX
    artifact for a backend that builds on the device is built there with the profile's
    precision and ``build_options``.

    Raises:
        BackendUnavailable: The board or its runtime is not usable (every reason given).
    """
    from edgecompress.backends import get_backend

    backend = get_backend(profile.backend)
    target = RemoteTarget(profile, backend)
    ok, reason = target.availability()
    if not ok:
        raise errors.BackendUnavailable(f"target profile {profile.name!r}: {reason}")
    artifact = Path(artifact)
    if target.builds_on_device and artifact.suffix == ".onnx":
        with tempfile.TemporaryDirectory() as tmp:
            engine = target.build(artifact, Path(tmp), precision=profile.precision)
            return target.benchmark(engine, x, y, **timing)
    return target.benchmark(artifact, x, y, **timing)


def bench_artifact_remote(artifact: Path, profile: TargetProfile, out_dir: Path, *,
                          data: str | None = None, seed: int = 0, overwrite: bool = False,
                          gate_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``edgecompress bench ARTIFACT --target <ssh profile>``: measured on the board, the
    report files written here exactly as for a local benchmark, plus ``targets[0].remote``.

    Raises:
        ConfigError / DataError / ModelError / RunDirError: bad input (nothing written).
        BackendUnavailable: the board or its runtime is not usable.
    """
    from edgecompress.bench.artifact import (
        _check_out_dir,
        _load_data,
        build_bench_report,
        write_bench_outputs,
    )

    artifact = Path(artifact)
    if not artifact.is_file():
        raise ConfigError(f"artifact not found: {artifact}")
    _check_out_dir(out_dir, overwrite)
    bundle, x, y = _load_data(data, seed) if data else (None, None, None)
    if x is None:
        if profile.input_shape is None:
            raise ConfigError(f"target profile {profile.name!r}: set input_shape (or pass "
                              "--data) to benchmark on the remote device")
        x = np.random.default_rng(0).standard_normal(profile.input_shape).astype(np.float32)
    measured = remote_benchmark(profile, artifact, x, y, warmup=profile.warmup,
                                runs=profile.runs, batch_size=min(profile.batch_size, len(x)),
                                max_seconds=profile.max_seconds, min_runs=profile.min_runs)
    report = build_bench_report(artifact, profile, bundle, measured, gate_overrides)
    report["targets"][0]["remote"] = measured["remote"]
    write_bench_outputs(report, measured["samples_ms"], out_dir)
    return report
