"""Target profiles: shipped ones validate, availability reasons, strictness, recipe use."""

from __future__ import annotations

import json

import pytest
import yaml

from edgecompress.errors import ConfigError
from edgecompress.recipe import parse_recipe
from edgecompress.targets import (
    list_profiles,
    load_profile,
    parse_profile,
    profile_availability,
    profile_paths,
)
from tests.conftest import REPO, run_cli

SHIPPED = {"x86-avx512", "x86-avx2", "x86-avx2-int8", "x86-avx512-vnni-int8",
           "android-arm64", "jetson-orin-nano", "jetson-agx-orin"}


def test_shipped_profiles_validate():
    assert SHIPPED <= set(profile_paths())
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name
        assert (REPO / "targets" / f"{name}.yaml").is_file()
    assert load_profile("jetson-orin-nano").backend == "tensorrt"
    assert load_profile("android-arm64").connection.kind == "adb"


def test_availability_reasons():
    avx512 = load_profile("x86-avx512")
    ok, reasons = profile_availability(avx512, flags={"avx2", "fma"}, machine="x86_64")
    assert not ok and reasons == ["instruction set missing: avx512f, avx512bw"]
    ok, reasons = profile_availability(avx512, flags={"avx512f", "avx512bw"}, machine="x86_64")
    assert ok and reasons == []
    ok, reasons = profile_availability(avx512, flags={"avx512f", "avx512bw"}, machine="aarch64")
    assert reasons == ["needs x86_64, this machine is aarch64"]
    ok, reasons = profile_availability(load_profile("jetson-orin-nano"))
    assert not ok
    # TensorRT is a registered backend now; it runs on the board, so only the board is missing.
    assert not any("runtime missing" in r for r in reasons)
    assert any("remote device over ssh (orin-nano.local)" in r for r in reasons)


def test_missing_runtime_is_a_reason(monkeypatch):
    from edgecompress.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "availability", lambda self: (False, "no ort here"))
    ok, reasons = profile_availability(load_profile("x86-avx2"), flags={"avx2", "fma"},
                                       machine="x86_64")
    assert not ok and reasons == ["runtime missing: no ort here"]


def test_profiles_are_strict():
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    with pytest.raises(ConfigError, match="budgets.max_latency_p99: unknown key"):
        parse_profile({**raw, "budgets": {"max_latency_p99": 3}}, "p.yaml")
    with pytest.raises(ConfigError, match="connection kind 'ssh' needs 'host'"):
        parse_profile({**raw, "connection": {"kind": "ssh"}}, "p.yaml")
    with pytest.raises(ConfigError, match="input_shape"):
        parse_profile({**raw, "input_shape": [4, 1, 8, 8]}, "p.yaml")  # batch_size is 1


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*x86-avx512"):
        load_profile("x86-avx1024")


def test_recipe_target_fills_from_profile():
    recipe = parse_recipe({"targets": [{"profile": "x86-avx2", "runs": 60},
                                       {"name": "mine", "profile": "x86-avx512",
                                        "gate": {"max_latency_p90_ms": 9.0}}]})
    first, second = recipe.targets
    assert (first.name, first.backend, first.runs, first.warmup) == ("x86-avx2", "onnxruntime",
                                                                    60, 20)
    assert first.gate.max_latency_p90_ms == 8.0 and first.gate.max_accuracy_drop == 1.5
    assert second.name == "mine" and second.gate.max_latency_p90_ms == 9.0
    with pytest.raises(ConfigError, match="targets.0.*unknown target profile 'nope'"):
        parse_recipe({"targets": [{"profile": "nope"}]})


def test_targets_command_lists_profiles():
    result = run_cli("targets", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert SHIPPED <= set(rows)
    assert rows["jetson-agx-orin"]["runnable"] is False
    # Whether a local profile runs here follows this machine's CPU flags.
    ok, reasons = profile_availability(load_profile("x86-avx512"))
    assert rows["x86-avx512"]["runnable"] is ok and rows["x86-avx512"]["reasons"] == reasons
    assert {r["name"] for r in list_profiles()} == set(rows)
    table = run_cli("targets")
    assert "jetson-orin-nano" in table.stdout
    assert "no: needs a remote device over ssh (orin-nano.local)" in table.stdout
