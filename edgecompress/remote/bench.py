"""Benchmark an engine on a board reached over ssh and bring the numbers back.

:class:`RemoteTarget` looks like a backend to the bench stage (``availability``, ``build``) and
adds ``benchmark``, which returns the same dict as :func:`edgecompress.bench.benchmark_runner`
(accuracy, latency_ms, samples_ms, logits) plus a ``remote`` entry saying where it ran. So a
Jetson target goes through the same report and gate code as a local one.

Where the engine is built depends on the backend: ONNX Runtime artifacts are portable, so they
are built here and copied; TensorRT plans are specific to the GPU and TensorRT version, so the
ONNX model is copied and the engine is built on the board (then fetched back into the run
directory, so the report's artifact and size are real).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.io import atomic_path
from edgecompress.remote.agent import LOGITS_NAME
from edgecompress.remote.jobs import (
    dynamic_input_shapes,
    last_json,
    remote_workdir,
    reraise,
    write_inputs,
)
from edgecompress.remote.ssh import RemoteError, RemoteUnreachable, SSHRunner
from edgecompress.targets import TargetProfile, builds_on_device, machine_reasons

logger = logging.getLogger(__name__)

SOURCE_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
_TIMES_NAME = "times.json"


class RemoteTarget:
    """A target profile whose device is reached over ssh (``connection.kind: ssh``)."""

    def __init__(self, profile: TargetProfile, backend: Any) -> None:
        if profile.connection.kind != "ssh":
            raise ConfigError(f"target profile {profile.name!r} is not reached over ssh")
        self.profile = profile
        self.backend = backend
        self.conn = profile.connection
        self.ssh = SSHRunner.from_connection(self.conn)
        self._pending: dict[Path, tuple[Path, str, dict[str, Any]]] = {}
        self._device: dict[str, Any] = {}
        self._tensorrt_major: int | None = None

    @property
    def builds_on_device(self) -> bool:
        """Whether engines are built on the board (TensorRT, or the trtexec runner)."""
        return builds_on_device(type(self.backend)) or self.conn.runner == "trtexec"

    def describe(self) -> dict[str, Any]:
        """The report's ``remote`` entry: where and with what the target was measured."""
        return {"kind": "ssh", "host": self.conn.host, "user": self.conn.user,
                "port": self.conn.port or 22, "runner": self.conn.runner,
                "built_on_device": self.builds_on_device, "device": dict(self._device)}

    # -- availability ----------------------------------------------------------------------
    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` when the board answers, the login works and its runtime is usable.

        An unreachable board is a reason (the target is skipped); an unverified host key or a
        refused login raise (a configuration error must not pass as "skipped").
        """
        reasons = machine_reasons(self.profile)
        if reasons:
            return False, "; ".join(reasons)
        if not self.builds_on_device:
            ok, why = self.backend.availability()
            if not ok:
                return False, f"runtime missing here (the engine is built here): {why}"
        try:
            return self._probe()
        except RemoteUnreachable as err:
            return False, str(err)

    def _probe(self) -> tuple[bool, str]:
        if self.conn.runner == "trtexec":
            proc = self.ssh.run([self.conn.trtexec, "--help"], check=False,
                                timeout=self.conn.connect_timeout + 60)
            text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
            from edgecompress.bench.trtexec import _STATUS, decode_version

            match = _STATUS.search(text)
            if proc.returncode == 127 or (match is None and proc.returncode != 0):
                return False, (f"trtexec not found or not working at {self.conn.trtexec} on "
                               f"{self.ssh.where} (connection.trtexec); JetPack installs it "
                               "with the tensorrt package")
            if match:
                version = decode_version(int(match.group(2)))
                self._tensorrt_major = int(version.split(".")[0])
                self._device["tensorrt"] = version
            return True, ""
        proc = self.ssh.run([*self.conn.python, "-m", "edgecompress.remote.agent", "--probe",
                             self.backend.name], check=False,
                            timeout=self.conn.connect_timeout + 120)
        result = last_json(proc.stdout)
        if result is None or "device" not in result:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            return False, (f"edgecompress is not usable on {self.ssh.where} with "
                           f"{shlex.join(self.conn.python)} ({'; '.join(tail) or 'no output'})"
                           "; install it there (pip install 'edgecompress[onnx]', or run the "
                           "Dockerfile.jetson image) or set connection.python")
        self._device = result["device"]
        if not result.get("ok"):
            return False, f"on {self.ssh.where}: {result.get('reason')}"
        return True, ""

    # -- build -----------------------------------------------------------------------------
    def build(self, source_onnx: Path, out_dir: Path, *, precision: str,
              **options: Any) -> Path:
        """Build here (portable artifacts), or stage the ONNX for a build on the board.

        For an on-device build the returned path is where the engine will be once
        :meth:`benchmark` fetched it back.
        """
        options = {**self.profile.build_options, **options}
        if not self.builds_on_device:
            return self.backend.build(source_onnx, out_dir, precision=precision, **options)
        check = getattr(self.backend, "check_build_options", None)
        if callable(check):
            check(precision, options)
        source = Path(source_onnx)
        if not source.is_file():
            raise ConfigError(f"ONNX model not found: {source}")
        if precision == "int8" and self.profile.backend == "tensorrt":
            # Fail here in seconds, not after minutes of engine build on the board.
            from edgecompress.quant.trt_lint import check_tensorrt_compat

            check_tensorrt_compat(source, require_qdq=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        staged = out_dir / SOURCE_NAME
        with atomic_path(staged) as tmp:
            shutil.copyfile(source, tmp)
        engine = out_dir / ENGINE_NAME
        self._pending[engine.resolve()] = (staged, precision, options)
        return engine

    # -- benchmark -------------------------------------------------------------------------
    def benchmark(self, artifact: Path, x: np.ndarray, y: np.ndarray | None, *, warmup: int,
                  runs: int, batch_size: int = 1, max_seconds: float | None = None,
                  min_runs: int | None = None) -> dict[str, Any]:
        """Measure ``artifact`` on the board, like ``benchmark_runner`` does locally.

        Returns:
            ``{"accuracy", "latency_ms", "samples_ms", "logits", "remote"}``; ``logits`` and
            ``accuracy`` are ``None`` with the trtexec runner (it only times).
        """
        artifact = Path(artifact)
        pending = self._pending.get(artifact.resolve())
        if pending is None and not artifact.is_file():
            raise ConfigError(f"artifact not found: {artifact}")
        job = f"{remote_workdir(self.conn.workdir).rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        try:
            if self.conn.runner == "trtexec":
                result = self._bench_trtexec(job, artifact, pending, x, warmup=warmup,
                                             runs=runs, batch_size=batch_size)
            else:
                result = self._bench_agent(job, artifact, pending, x, y, warmup=warmup,
                                           runs=runs, batch_size=batch_size,
                                           max_seconds=max_seconds, min_runs=min_runs)
        finally:
            self.ssh.remove(job)
        remote = self.describe()
        remote["seconds"] = round(time.perf_counter() - t0, 3)
        if result.get("build_seconds") is not None:
            remote["build_seconds"] = result["build_seconds"]
        logger.info("%s on %s: p50 %.4f ms", artifact.name, self.ssh.where,
                    result["latency_ms"]["p50"])
        return {"accuracy": result["accuracy"], "latency_ms": result["latency_ms"],
                "samples_ms": result["samples_ms"], "logits": result["logits"],
                "remote": remote}

    def _upload(self, job: str, artifact: Path, pending: Any,
                extra: dict[str, Path]) -> tuple[str, str | None]:
        """Copy the model (and ``extra``) into the job; returns (its name there, precision of
        an on-device build or None)."""
        if pending is not None:
            source, precision, _ = pending
            self.ssh.upload({SOURCE_NAME: source, **extra}, job)
            return SOURCE_NAME, precision
        self.ssh.upload({**with_description(artifact.name, artifact), **extra}, job)
        return artifact.name, None

    def _fetch_engine(self, remote_dir: str, name: str, artifact: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            (fetched,) = self.ssh.download(remote_dir, [name], Path(tmp))
            with atomic_path(artifact) as dst:
                shutil.copyfile(fetched, dst)

    def _bench_agent(self, job: str, artifact: Path, pending: Any, x: np.ndarray,
                     y: np.ndarray | None, **timing: Any) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = write_inputs(Path(tmp), x, y)
            request = Path(tmp) / "request.json"
            name, precision = self._upload(job, artifact, pending, {"inputs.npz": inputs})
            request.write_text(json.dumps({
                "backend": self.backend.name, "artifact": name, "build": pending is not None,
                "precision": precision or self.profile.precision,
                "build_options": pending[2] if pending else {}, "threads": self.profile.threads,
                "inputs": "inputs.npz", **timing}), encoding="utf-8")
            self.ssh.upload({"request.json": request}, job)
            result = self._run_agent(job)
            (logits_file,) = self.ssh.download(job, [LOGITS_NAME], Path(tmp))
            logits = np.load(logits_file, allow_pickle=False)
            if pending is not None:
                engine_dir, engine_name = str(Path(job) / Path(result["artifact"]).parent), \
                    Path(result["artifact"]).name
                self._fetch_engine(engine_dir, engine_name, artifact)
        return {**result, "logits": logits}

    def _run_agent(self, job: str) -> dict[str, Any]:
        """Run the agent on ``job/request.json``; its result, or the error it reported."""
        proc = self.ssh.run([*self.conn.python, "-m", "edgecompress.remote.agent",
                             f"{job}/request.json"], check=False)
        result = last_json(proc.stdout)
        if result is None:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-10:]
            raise RemoteError(f"on {self.ssh.where}: the edgecompress agent gave no result "
                              f"(exit {proc.returncode}):\n  " + "\n  ".join(tail))
        if not result.get("ok"):
            raise reraise(self.ssh.where, result.get("error") or {})
        self._device = result.get("device") or self._device
        return result

    @property
    def interleaves(self) -> bool:
        """Whether several engines can be timed in one interleaved run on the board (the
        edgecompress agent can; trtexec times one engine per invocation)."""
        return self.conn.runner != "trtexec"

    def benchmark_many(self, artifacts: dict[str, Path], x: np.ndarray, y: np.ndarray | None,
                       *, warmup: int, runs: int, batch_size: int = 1,
                       max_seconds: float | None = None, min_runs: int | None = None
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Time every artifact on the board in the same interleaved rounds (agent runner).

        Returns:
            ``(name -> {"accuracy", "latency_ms", "samples_ms", "logits", "remote"}, speed)``
            where ``speed`` holds the report's timing and same-round speedup fields
            (``student`` vs ``teacher``), computed on the board.
        """
        if not self.interleaves:
            raise ConfigError("the trtexec runner times one engine per call; use benchmark()")
        job = f"{remote_workdir(self.conn.workdir).rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                inputs = write_inputs(Path(tmp), x, y)
                files, specs, pending = {"inputs.npz": inputs}, [], {}
                for name, artifact in artifacts.items():
                    artifact = Path(artifact)
                    staged = self._pending.get(artifact.resolve())
                    if staged is None and not artifact.is_file():
                        raise ConfigError(f"artifact not found: {artifact}")
                    source, precision, options = staged or (artifact, None, {})
                    remote_name = f"{name}--{Path(source).name}"
                    files.update(with_description(remote_name, Path(source)))
                    specs.append({"name": name, "artifact": remote_name,
                                  "build": staged is not None,
                                  "precision": precision or self.profile.precision,
                                  "build_options": options})
                    if staged is not None:
                        pending[name] = artifact
                request = Path(tmp) / "request.json"
                request.write_text(json.dumps({
                    "backend": self.backend.name, "precision": self.profile.precision,
                    "threads": self.profile.threads, "inputs": "inputs.npz", "engines": specs,
                    "warmup": warmup, "runs": runs, "batch_size": batch_size,
                    "max_seconds": max_seconds, "min_runs": min_runs}), encoding="utf-8")
                self.ssh.upload({**files, "request.json": request}, job)
                result = self._run_agent(job)
                names = list(artifacts)
                fetched = self.ssh.download(job, [f"logits-{n}.npy" for n in names], Path(tmp))
                logits = {n: np.load(f, allow_pickle=False)
                          for n, f in zip(names, fetched, strict=True)}
                for name, artifact in pending.items():
                    built = Path(job) / result["engines"][name]["artifact"]
                    self._fetch_engine(str(built.parent), built.name, artifact)
        finally:
            self.ssh.remove(job)
        remote = self.describe()
        remote["seconds"] = round(time.perf_counter() - t0, 3)
        out = {}
        for name in artifacts:
            engine = result["engines"][name]
            out[name] = {"accuracy": engine["accuracy"], "latency_ms": engine["latency_ms"],
                         "samples_ms": engine["samples_ms"], "logits": logits[name],
                         "remote": {**remote, **({"build_seconds": engine["build_seconds"]}
                                                 if engine.get("build_seconds") is not None
                                                 else {})}}
            logger.info("%s on %s: p50 %.4f ms (interleaved)", name, self.ssh.where,
                        engine["latency_ms"]["p50"])
        return out, result["speed"]

    def _bench_trtexec(self, job: str, artifact: Path, pending: Any, x: np.ndarray, *,
                       warmup: int, runs: int, batch_size: int) -> dict[str, Any]:
        from edgecompress.bench.latency import LatencyStats
        from edgecompress.bench.trtexec import (
            compute_times_ms,
            latency_from_summary,
            parse_trtexec_summary,
            trtexec_command,
        )

        if self._tensorrt_major is None:
            self._probe()
        name, precision = self._upload(job, artifact, pending, {})
        options = dict(pending[2]) if pending else {}
        if isinstance(x, dict):  # several inputs (token ids and mask): a shape for each
            per_input = {k: [batch_size, *np.shape(v)[1:]] for k, v in x.items()}
            input_shape = next(iter(per_input.values()))
            shapes = dynamic_input_shapes(pending[0] if pending else None, per_input)
        else:
            input_shape = [batch_size, *np.asarray(x).shape[1:]]
            shapes = dynamic_input_shapes(pending[0] if pending else None, input_shape)
        argv = trtexec_command(
            onnx=name if pending else None, load_engine=None if pending else name,
            save_engine=ENGINE_NAME if pending else None,
            precision=precision or self.profile.precision,
            tensorrt_major=self._tensorrt_major or 10, dla_core=options.get("dla_core"),
            gpu_fallback=options.get("gpu_fallback", True),
            workspace_mb=options.get("workspace_mb"), warmup_ms=max(1, warmup) * 10,
            iterations=runs, shapes=shapes, export_times=_TIMES_NAME, trtexec=self.conn.trtexec)
        proc = self.ssh.run(f"cd {shlex.quote(job)} && {shlex.join(argv)}", check=False)
        text = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
        summary = parse_trtexec_summary(text)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                (times_file,) = self.ssh.download(job, [_TIMES_NAME], Path(tmp))
                samples = compute_times_ms(times_file)
            except EdgeCompressError as err:
                logger.warning("trtexec per-iteration times unavailable (%s); using its "
                               "summary", err)
                samples = []
        if samples:
            latency = LatencyStats.from_samples(samples, warmup=warmup, batch_size=batch_size,
                                                input_shape=input_shape,
                                                stopped_by="runs").to_dict()
            latency.update(source="trtexec GPU Compute Time",
                           throughput_qps=summary.throughput_qps)
        else:
            latency = latency_from_summary(summary, warmup=warmup, batch_size=batch_size,
                                           input_shape=input_shape)
        if summary.tensorrt_version:
            self._device["tensorrt"] = summary.tensorrt_version
        if pending is not None:
            self._fetch_engine(job, ENGINE_NAME, artifact)
        return {"accuracy": None, "latency_ms": latency, "samples_ms": samples, "logits": None}


def with_description(remote_name: str, artifact: Path) -> dict[str, Path]:
    """``{remote name: artifact}`` plus the artifact's engine description, uploaded as
    ``<remote name>.engine.json`` so the board serves the engine with the same session settings
    (an INT8 ORT engine's disabled graph optimizers) as this machine would."""
    from edgecompress.backends.onnxruntime import ENGINE_INFO_NAME, engine_description

    files = {remote_name: Path(artifact)}
    description = engine_description(artifact)
    if description is not None:
        files[f"{remote_name}.{ENGINE_INFO_NAME}"] = description
    return files


def remote_target(profile: TargetProfile | None, backend: Any) -> RemoteTarget | None:
    """A :class:`RemoteTarget` when ``profile`` is reached over ssh, else ``None``."""
    if profile is None or profile.connection.kind != "ssh":
        return None
    return RemoteTarget(profile, backend)


def remote_target_for(target: Any, backend: Any) -> RemoteTarget | None:
    """For the bench stage: the recipe target's profile, when it is an ssh profile."""
    if not getattr(target, "profile", None):
        return None
    from edgecompress.targets import load_profile

    return remote_target(load_profile(target.profile), backend)
