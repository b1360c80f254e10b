"""What the CPU offers for INT8 and FP32 arithmetic, read from ``/proc/cpuinfo``.

Why it matters: ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights.
With VNNI (``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) the products are accumulated in 32 bits and
are exact. Without VNNI (AVX2, AVX-512BW alone) the kernels use ``vpmaddubsw``, which adds two
u8 x s8 products into a *saturating 16-bit* lane: 255 x 127 x 2 = 64,770 > 32,767, so large
activations times large weights are clipped and the engine diverges from the int8 model it came
from. ONNX Runtime documents ``reduce_range`` (7-bit weights) for such CPUs; with |w| <= 63 the
pair sum is at most 255 x 63 x 2 = 32,130 and cannot saturate (see :mod:`edgecompress.quant`).
Arm's ``sdot``/``udot`` (``asimddp``) and ``smmla`` (``i8mm``) accumulate in 32 bits: exact.

Peak figures are per core and per cycle, from the instruction widths and the usual two SIMD
pipes; they turn a measured latency into "fraction of what this CPU could do", which is what
tells a user whether an engine is compute-bound or overhead-bound:

- ``amx``: reported as AVX-512 VNNI (AMX tiles are not used by ORT's default CPU kernels);
- ``avx512-vnni``: 2 pipes x 64 u8*s8 MACs (512-bit vpdpbusd) = 128 int8, 2 x 16 = 32 fp32;
- ``avx-vnni``: 2 x 32 = 64 int8, 2 x 8 = 16 fp32;
- ``avx512``: vpmaddubsw + vpmaddwd per 64 MACs over 2 pipes = 64 int8, 32 fp32;
- ``avx2``: the same on 256 bits = 32 int8, 16 fp32 (two instructions per 32 MACs);
- ``arm64-i8mm``: 2 pipes x 32 MACs (128-bit smmla) = 64 int8, 2 x 4 = 8 fp32;
- ``arm64-dotprod``: 2 x 16 (sdot) = 32 int8, 8 fp32;  ``arm64``: 16 int8, 8 fp32;
- anything else: 16 int8 and 8 fp32 (SSE-class), a floor rather than a claim.

The clock is the highest ``cpu MHz`` seen in ``/proc/cpuinfo`` or the cpufreq maximum when the
kernel exposes it (``clock_source`` says which); virtual machines often report the base clock,
so the fraction of peak is an estimate, labelled as such in reports.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

#: ISA class -> (int8 MACs/cycle/core, fp32 MACs/cycle/core); see the module docstring.
PEAKS: dict[str, tuple[int, int]] = {
    "avx512-vnni": (128, 32),
    "avx-vnni": (64, 16),
    "avx512": (64, 32),
    "avx2": (32, 16),
    "arm64-i8mm": (64, 8),
    "arm64-dotprod": (32, 8),
    "arm64": (16, 8),
    "generic": (16, 8),
}

#: The x86 flags reported in every environment block (as /proc/cpuinfo spells them).
X86_FLAGS = ("sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_int8", "amx_tile")
#: The Arm flags reported likewise.
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
#: Flags that mean ORT's u8 x s8 kernels accumulate exactly (no 16-bit intermediate).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def isa_class(flags: set[str] | frozenset[str], arch: str) -> str:
    """The int8 ISA class (a key of :data:`PEAKS`) a set of cpuinfo flags belongs to."""
    if arch in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64-i8mm"
        return "arm64-dotprod" if "asimddp" in flags else "arm64"
    if "avx512_vnni" in flags or "amx_int8" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "generic"


def u8s8_saturates(isa: str) -> bool:
    """Whether ORT's u8 x s8 int8 kernels can saturate on this ISA class (x86 without VNNI)."""
    return isa in ("avx512", "avx2", "generic")


@dataclass(frozen=True)
class CpuInfo:
    """This machine's CPU as far as INT8/FP32 kernels care.

    Attributes:
        arch: ``platform.machine()`` (``x86_64``, ``aarch64``).
        model: The ``model name`` line (or Arm's ``CPU part``), ``unknown`` when absent.
        flags: Every flag of the ``flags`` / ``Features`` line.
        clock_ghz: Clock used for peak figures (see ``clock_source``), None if unknown.
        clock_source: Where ``clock_ghz`` came from.
    """

    arch: str
    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    clock_ghz: float | None = None
    clock_source: str = "unknown"

    @property
    def isa(self) -> str:
        return isa_class(self.flags, self.arch)

    @property
    def int8_saturates(self) -> bool:
        return u8s8_saturates(self.isa)

    @property
    def int8_peak_macs_per_cycle(self) -> int:
        return PEAKS[self.isa][0]

    @property
    def fp32_peak_macs_per_cycle(self) -> int:
        return PEAKS[self.isa][1]

    def peak_gmacs(self, precision: str, threads: int = 1) -> float | None:
        """Peak GMAC/s for ``precision`` (``int8`` or ``fp32``) on ``threads`` cores."""
        if self.clock_ghz is None:
            return None
        per_cycle = (self.int8_peak_macs_per_cycle if precision == "int8"
                     else self.fp32_peak_macs_per_cycle)
        return per_cycle * self.clock_ghz * max(1, threads)

    def peak_formula(self, precision: str, threads: int = 1) -> str:
        per_cycle = (self.int8_peak_macs_per_cycle if precision == "int8"
                     else self.fp32_peak_macs_per_cycle)
        clock = f"{self.clock_ghz:.2f} GHz" if self.clock_ghz else "unknown clock"
        return (f"{per_cycle} {precision} MAC/cycle/core ({self.isa}) x {clock} "
                f"({self.clock_source}) x {max(1, threads)} thread(s)")

    def to_dict(self) -> dict[str, Any]:
        shown = X86_FLAGS if self.arch == "x86_64" else ARM_FLAGS
        return {"arch": self.arch, "model": self.model, "isa": self.isa,
                "flags": sorted(f for f in shown if f in self.flags),
                "int8_saturates_u8s8": self.int8_saturates,
                "int8_peak_macs_per_cycle": self.int8_peak_macs_per_cycle,
                "fp32_peak_macs_per_cycle": self.fp32_peak_macs_per_cycle,
                "clock_ghz": self.clock_ghz, "clock_source": self.clock_source}


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (any architecture)."""
    flags: set[str] = set()
    model, part, mhz = "", "", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value
        elif key == "CPU part" and not part:
            part = value
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    clock, source = None, "unknown"
    if mhz:
        clock, source = round(max(mhz) / 1000.0, 3), "/proc/cpuinfo cpu MHz (max over cores)"
    return CpuInfo(arch=arch, model=model or (f"Arm CPU part {part}" if part else "unknown"),
                   flags=frozenset(flags), clock_ghz=clock, clock_source=source)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (cached; empty flags when /proc/cpuinfo is unreadable)."""
    arch = platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    info = parse_cpuinfo(text, arch)
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        khz = int(max_freq.read_text().strip())
    except (OSError, ValueError):
        return info
    return CpuInfo(arch=info.arch, model=info.model, flags=info.flags,
                   clock_ghz=round(khz / 1e6, 3), clock_source=str(max_freq))


def isa_of_flags(required: list[str] | tuple[str, ...], arch: str | None) -> str | None:
    """The ISA class a target profile asks for through ``requires.cpu_flags`` (None: no flags)."""
    if not required:
        return None
    return isa_class(set(required), arch or "x86_64")
