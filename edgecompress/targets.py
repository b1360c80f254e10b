"""Target profiles: YAML files in ``targets/`` describing a deployment device as data.

A profile says which backend and precision run the model, with how many threads, on what input
shape, within which latency/accuracy budgets, and how the device is reached (this machine, ssh or
adb). Profiles are validated strictly (unknown keys are errors) but, unlike recipe targets, may
name backends this version does not implement yet (``tflite``, ``tensorrt``): describing a Jetson
must not require TensorRT on the laptop that lists it. Whether a profile can run *here* is a
separate question answered by :func:`profile_availability`.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shlex
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecompress.config import GateConfig, check_field_range
from edgecompress.errors import ConfigError

logger = logging.getLogger(__name__)

PROFILE_VERSION = 1
#: Overrides where profiles are looked up by name (a directory).
TARGETS_DIR_ENV = "EDGECOMPRESS_TARGETS_DIR"
#: Recipe target fields a profile may fill.
_FILLED = ("backend", "precision", "threads", "batch_size", "warmup", "runs", "max_seconds",
           "min_runs")
#: Set to 1 to accept ``connection.ssh_config`` in profiles: ssh reads that file as code
#: (ProxyCommand, LocalCommand, Match exec run local programs), so a profile checked out from
#: an untrusted repository must not be able to name one (``/dev/null``, no config, is fine).
TRUST_SSH_CONFIG_ENV = "EDGECOMPRESS_TRUST_SSH_CONFIG"
#: Host names and addresses ssh may be pointed at (RFC 1123 names, IPv4, bracket-less IPv6).
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.:%-]{0,251}[A-Za-z0-9_.])?$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _ranges = field_validator("*", mode="after", check_fields=False)(check_field_range)


class Connection(_Strict):
    """How the device is reached: this machine, a Linux board over ssh, or a phone over adb.

    The ssh fields exist so a benchmark on a Jetson is reproducible from a profile alone:
    which key logs in, which known_hosts file vouches for the host (host keys are always
    verified), how long to wait, and which program measures on the board.
    """

    kind: Literal["local", "ssh", "adb"] = Field("local", description="local: this machine; "
                                                 "ssh: a Linux board; adb: an Android device.")
    host: str | None = Field(None, description="ssh: host name or address.")
    user: str | None = Field(None, description="ssh: login user.")
    port: int | None = Field(None, ge=1, le=65535, description="ssh port (default 22).")
    serial: str | None = Field(None, description="adb: device serial (default: the only one).")
    workdir: str | None = Field(None, description="Directory on the device for artifacts.")
    identity_file: str | None = Field(None, description="ssh: private key (default: the ssh "
                                      "client's own choice, e.g. ~/.ssh/id_ed25519 or an agent).")
    known_hosts: str | None = Field(None, description="ssh: known_hosts file that must hold the "
                                    "host's key (default: ~/.ssh/known_hosts). Unknown or "
                                    "changed host keys are always refused.")
    ssh_config: str | None = Field(None, description="ssh: client config file passed as -F "
                                   "(e.g. for ProxyJump); default: the user's ~/.ssh/config.")
    connect_timeout: float = Field(10.0, gt=0, description="ssh: seconds to wait for the "
                                   "connection (also the reachability probe).")
    timeout: float = Field(1800.0, gt=0, description="ssh: seconds one remote command may run "
                           "(a TensorRT engine build on an Orin Nano takes minutes).")
    runner: Literal["edgecompress", "trtexec"] = Field(
        "edgecompress", description="ssh: what measures on the device: 'edgecompress' (the "
        "package installed there; accuracy, parity and latency) or 'trtexec' (TensorRT's tool; "
        "latency only).")
    python: list[str] = Field(default_factory=lambda: ["python3"], description="ssh: command "
                              "that starts a Python with edgecompress installed on the device "
                              "(a string or a list, e.g. [/opt/venv/bin/python]).")
    trtexec: str = Field("/usr/src/tensorrt/bin/trtexec", description="ssh runner 'trtexec': "
                         "its path on the device (JetPack's default).")

    @field_validator("python", mode="before")
    @classmethod
    def _python_as_list(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        labels = value.split(".")
        if (not _HOST_RE.match(value) or any(len(label) > 63 for label in labels)
                or value.startswith("-")):
            raise ValueError(f"{value[:80]!r}: not a host name or address (letters, digits, "
                             "'-', '.', at most 63 characters per label, 253 in all)")
        return value

    @field_validator("user")
    @classmethod
    def _valid_user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_RE.match(value):
            raise ValueError(f"{value[:80]!r}: not a login name (letters, digits, '_', '.', '-'; "
                             "not starting with '-')")
        return value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Connection:
        if self.kind == "ssh" and not self.host:
            raise ValueError("connection kind 'ssh' needs 'host'")
        ssh_only = [k for k in ("host", "user", "port", "identity_file", "known_hosts",
                                "ssh_config") if getattr(self, k)]
        if self.kind != "ssh" and ssh_only:
            raise ValueError(f"{'/'.join(ssh_only)}: ssh fields, not valid for kind "
                             f"'{self.kind}'")
        if self.kind != "adb" and self.serial:
            raise ValueError(f"serial is an adb field, not valid for kind '{self.kind}'")
        if not self.python:
            raise ValueError("python: needs at least the interpreter")
        return self


class Requirements(_Strict):
    """What the machine running the engine must have (checked against /proc/cpuinfo)."""

    arch: Literal["x86_64", "aarch64"] | None = Field(None, description="CPU architecture.")
    cpu_flags: list[str] = Field(default_factory=list, description="Instruction-set flags as "
                                 "/proc/cpuinfo spells them (avx2, avx512_vnni, asimddp, ...).")


class TargetProfile(_Strict):
    """One device profile (``targets/<name>.yaml``)."""

    version: Literal[1] = Field(PROFILE_VERSION, description="Profile schema version.")
    name: str = Field(description="Profile name (the file stem by convention).")
    description: str = Field("", description="What the device is, in a sentence.")
    backend: str = Field(description="Backend name; may be one this version does not "
                         "implement yet (then the profile is listed as not runnable).")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Engine precision.")
    threads: int = Field(1, ge=1, description="Intra-op threads.")
    batch_size: int = Field(1, ge=1, description="Batch size of the latency measurement.")
    input_shape: list[int] | None = Field(None, min_length=2, description="[N, C, H, W] the "
                                          "engine is timed on; null: the data's/model's shape.")
    warmup: int = Field(20, ge=0, description="Untimed warm-up runs.")
    runs: int = Field(200, ge=50, description="Timed runs (the most, with max_seconds).")
    max_seconds: float | None = Field(None, gt=0, description="Time budget of the timed loop.")
    min_runs: int = Field(50, ge=10, description="With max_seconds: timed runs always made.")
    build_options: dict[str, Any] = Field(default_factory=dict, description="Backend build "
                                          "options passed to its build (tensorrt: dla_core, "
                                          "gpu_fallback, workspace_mb); unknown ones are "
                                          "rejected by the backend.")
    requires: Requirements = Field(default_factory=Requirements)
    connection: Connection = Field(default_factory=Connection)
    budgets: GateConfig = Field(default_factory=GateConfig, description="Latency/accuracy/size "
                                "budgets; they become gate thresholds of targets using this "
                                "profile.")

    @model_validator(mode="after")
    def _shape_matches_batch(self) -> TargetProfile:
        if self.input_shape is not None:
            if any(d < 1 for d in self.input_shape):
                raise ValueError(f"input_shape {self.input_shape}: dimensions must be >= 1")
            if self.input_shape[0] != self.batch_size:
                raise ValueError(f"input_shape[0] ({self.input_shape[0]}) must equal batch_size "
                                 f"({self.batch_size})")
        return self

    def fill_target(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A recipe target mapping with this profile's values where the recipe left a gap."""
        out = {k: v for k, v in raw.items()}
        out.setdefault("name", self.name)
        for key in _FILLED:
            if key not in out and getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if "isa" not in out and self.connection.kind == "local":
            from edgecompress.isa import isa_of_flags

            isa = isa_of_flags(self.requires.cpu_flags, self.requires.arch)
            if isa is not None:
                out["isa"] = isa
        budgets = self.budgets.model_dump(exclude_defaults=True)
        out["gate"] = {**budgets, **(out.get("gate") or {})}
        return out


def targets_dir() -> Path:
    """Where profiles are looked up by name: $EDGECOMPRESS_TARGETS_DIR, else the shipped ones in
    the package (``edgecompress/profiles``, package data: a wheel install has them too; the
    checkout's ``targets/`` is a link to that folder)."""
    env = os.environ.get(TARGETS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "profiles"


def profile_paths() -> dict[str, Path]:
    """Profile name -> file, for every ``*.yaml`` in :func:`targets_dir`."""
    folder = targets_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid target profile"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_profile(raw: Any, source: str) -> TargetProfile:
    """Validate a parsed mapping into a :class:`TargetProfile`.

    Raises:
        ConfigError: naming ``source`` and every bad key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a target profile must be a mapping")
    try:
        profile = TargetProfile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None
    if (profile.connection.ssh_config not in (None, "/dev/null")
            and os.environ.get(TRUST_SSH_CONFIG_ENV) != "1"):
        raise ConfigError(
            f"{source}: connection.ssh_config: refused: ssh runs programs named in its config "
            "file (ProxyCommand, LocalCommand), so a profile may only name one when you trust "
            f"both; set {TRUST_SSH_CONFIG_ENV}=1 to allow it (or put the host in your own "
            "~/.ssh/config, which ssh reads anyway)")
    return profile


def profile_for_validator(name_or_path: Any) -> TargetProfile:
    """:func:`load_profile` for a pydantic validator (a recipe target's ``profile:``): a bad
    name or file becomes the ``ValueError`` pydantic reports at the key's dotted path."""
    try:
        return load_profile(str(name_or_path))
    except ConfigError as err:
        raise ValueError(str(err)) from None


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """Load a profile by name (``x86-avx512``) or by YAML path.

    Raises:
        ConfigError: unknown name (the message lists the known ones), unreadable or invalid file.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"target profile file not found: {path}")
    else:
        known = profile_paths()
        if text not in known:
            raise ConfigError(f"unknown target profile {text!r}; known profiles: "
                              f"{', '.join(known) or f'none (no YAML in {targets_dir()})'}")
        path = known[text]
    from edgecompress.inputs import load_user_yaml

    return parse_profile(load_user_yaml(path, "target profile"), str(path))


def cpu_flags() -> set[str]:
    """Every instruction-set flag of this CPU (x86 ``flags`` / Arm ``Features`` lines)."""
    from edgecompress.isa import cpu_info

    return set(cpu_info().flags)


def host_reachable(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Cheap (no login, no key exchange), so ``edgecompress targets`` can say which boards are up;
    the real ssh session later still verifies the host key and logs in.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except (OSError, UnicodeError, ValueError) as err:  # UnicodeError: a label IDNA rejects
        return False, f"{type(err).__name__}: {err}"


def machine_reasons(profile: TargetProfile, *, flags: set[str] | None = None,
                    machine: str | None = None) -> list[str]:
    """Why the profile's device cannot be used from here.

    local: this machine's architecture and instruction sets; ssh: whether the host answers (its
    CPU is the board's business, checked there); adb: whether adb sees the device.
    """
    reasons = []
    conn = profile.connection
    if conn.kind == "ssh":
        port = conn.port or 22
        ok, why = host_reachable(str(conn.host), port, min(conn.connect_timeout, 5.0))
        if not ok:
            reasons.append(f"needs a remote device over ssh ({conn.host}), not reachable on "
                           f"port {port}: {why}")
    elif conn.kind == "adb":
        from edgecompress.bench.adb import adb_availability

        ok, why = adb_availability(conn.serial)
        if not ok:
            reasons.append(f"needs a remote device over adb ({conn.serial or 'a device'}): {why}")
    else:
        machine = machine or platform.machine()
        if profile.requires.arch and profile.requires.arch != machine:
            reasons.append(f"needs {profile.requires.arch}, this machine is {machine}")
        have = cpu_flags() if flags is None else flags
        missing = [f for f in profile.requires.cpu_flags if f not in have]
        if missing:
            reasons.append(f"instruction set missing: {', '.join(missing)}")
    return reasons


def builds_on_device(backend_cls: type | None) -> bool:
    """Whether the backend's engine must be built on the device itself (TensorRT plans are
    specific to the GPU and TensorRT version), so this machine needs no runtime for it."""
    return bool(getattr(backend_cls, "builds_on_device", False))


def profile_availability(profile: TargetProfile, *, flags: set[str] | None = None,
                         machine: str | None = None) -> tuple[bool, list[str]]:
    """Whether ``profile`` can be benchmarked from this machine, with every reason it cannot.

    Checks, in order: the backend is implemented and supports the precision, the device is
    usable (this machine's CPU for local profiles, the host answering for ssh ones), and the
    runtime is installed here, unless an ssh device builds the engine itself.
    """
    from edgecompress.backends import BACKENDS

    reasons = []
    backend_cls = BACKENDS.get(profile.backend)
    if backend_cls is None:
        reasons.append(f"backend '{profile.backend}' is not implemented in this version "
                       f"(registered: {', '.join(sorted(BACKENDS))})")
    elif profile.precision not in backend_cls.capabilities.precisions:
        reasons.append(f"backend '{profile.backend}' does not support {profile.precision} yet "
                       f"(supports {', '.join(backend_cls.capabilities.precisions)})")
    reasons += machine_reasons(profile, flags=flags, machine=machine)
    remote_build = profile.connection.kind == "ssh" and builds_on_device(backend_cls)
    if backend_cls is not None and not remote_build:
        ok, why = backend_cls().availability()
        if not ok:
            reasons.append(f"runtime missing: {why}")
    return not reasons, reasons


def list_profiles() -> list[dict[str, Any]]:
    """Every profile with its availability here; an invalid file is listed with its error."""
    rows = []
    for name, path in profile_paths().items():
        try:
            profile = load_profile(path)
        except ConfigError as err:
            rows.append({"name": name, "path": str(path), "runnable": False,
                         "reasons": [str(err)]})
            continue
        ok, reasons = profile_availability(profile)
        rows.append({"name": profile.name, "path": str(path), "backend": profile.backend,
                     "precision": profile.precision, "threads": profile.threads,
                     "connection": profile.connection.kind, "runnable": ok, "reasons": reasons})
    return rows
