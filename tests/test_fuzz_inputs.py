"""Property-based fuzzing of every user-supplied file (issue 16.5).

Hypothesis generates recipes, target profiles, reports and damaged files (mutated bytes, wrong
types, NaN/inf, huge numbers, unknown keys) and runs the real CLI in-process on them. Properties:
the exit code is one the README promises (0, 1, 2, 3), no traceback is printed, and nothing
half-written (an atomic-write temp file, a junit.xml for a refused report) is left behind.

Deterministic by default (CI); ``EDGECOMPRESS_FUZZ_RANDOM=1`` explores new examples and
``EDGECOMPRESS_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed (dev extra)")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import TINY_RECIPE, run_main  # noqa: E402
from tests.reports import make_report, tiny_onnx  # noqa: E402

PROMISED = {0, 1, 2, 3}
_SCALE = int(os.environ.get("EDGECOMPRESS_FUZZ_SCALE", "1"))
_TEMP_RE = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp")


def fuzz(examples: int):
    """Hypothesis settings of one fuzz test: ``examples`` (times the scale), no deadline."""
    return settings(max_examples=examples * _SCALE, deadline=None, database=None,
                    derandomize=not os.environ.get("EDGECOMPRESS_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def assert_promised(result: tuple[int, str], allowed: set[int] = PROMISED) -> int:
    code, text = result
    event(f"exit {code}")  # the spread shows with --hypothesis-show-statistics
    assert code in allowed, (code, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    if code == 2:
        assert text.strip(), "exit 2 without a message"
    return code


def assert_nothing_half_written(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if _TEMP_RE.match(p.name)]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------- strategies

_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**18, 10**12, 100_000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e18, 1e-320, -0.0]),
    st.text(max_size=12),
    st.sampled_from(["", "-oProxyCommand=touch /tmp/x", "../../etc/passwd", "a" * 300,
                     "x86-avx512", "int8", "onnxruntime", "\x00", "caf\u00e9", "1e18"]),
)
values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict/list (the places a mutation can hit)."""
    found = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += _paths(value, prefix + (i,))
    return found


def _set(tree: Any, path: tuple, value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _full_recipe() -> dict:
    from edgecompress.recipe import parse_recipe, recipe_to_dict

    return recipe_to_dict(parse_recipe(copy.deepcopy(TINY_RECIPE)))


FULL_RECIPE = _full_recipe()
RECIPE_PATHS = _paths(FULL_RECIPE)


@st.composite
def mutated(draw, base: dict, paths: list[tuple], extra_keys: bool = True) -> dict:
    """``base`` with a few values replaced by arbitrary ones (and maybe an unknown key)."""
    doc = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        try:
            _set(doc, path, draw(values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation replaced a parent
    if extra_keys and draw(st.booleans()):
        doc[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """``data`` with random bytes overwritten/inserted/deleted, or truncated."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        else:
            del buf[pos:]
    return bytes(buf)


def _dump_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


# --------------------------------------------------------------------------- recipes

@fuzz(150)
@given(doc=mutated(FULL_RECIPE, RECIPE_PATHS))
def test_fuzz_recipe_values(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(_dump_yaml(doc))
        assert_promised(run_main("validate", path), {0, 2})
        assert_nothing_half_written(Path(tmp))


RECIPE_BYTES = _dump_yaml(TINY_RECIPE).encode()


@fuzz(150)
@given(data=damaged_bytes(RECIPE_BYTES))
def test_fuzz_recipe_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        assert_promised(run_main("validate", path), {0, 2})


_yaml_tokens = st.sampled_from(["version: 1\n", "&a ", "*a", "[", "]", "{", "}", ": ", "- ",
                                "!!binary ", "!!set ", "!!python/object ", "? ", "|\n", "\t",
                                "2024-01-01", ".inf", ".nan", "0x1F", "~", "\n  ", ",", "'",
                                "\"", "#", "%YAML 1.2\n", "---\n", "...\n", "<<: *a\n"])


@fuzz(100)
@given(text=st.lists(st.one_of(_yaml_tokens, st.text(max_size=6)), max_size=30).map("".join))
def test_fuzz_recipe_yaml_syntax(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text("version: 1\n" + text)
        assert_promised(run_main("validate", path), {0, 2})


TEXT_RECIPE = {
    "version": 1, "task": "text-classification", "name": "tiny",
    "data": {"path": "reviews.csv", "labels": ["neg", "pos"], "max_length": 24},
    "teacher": {"path": "teacher", "finetune": {"epochs": 8, "lr": 0.003, "batch_size": 16}},
    "student": {"keep_layers": [1]},
    "distill": {"epochs": 2, "lr": 0.002, "hidden": 1.0, "attention": 1.0, "batch_size": 16},
    "prune": {"enabled": True, "heads_ratio": 0.5, "ffn_ratio": 0.5,
              "recovery": {"epochs": 1, "lr": 0.001, "batch_size": 16}},
    "quant": {"method": "ptq_dynamic"},
    "targets": [{"name": "fp32", "precision": "fp32", "seq_len": 32, "runs": 5, "warmup": 1,
                 "min_runs": 5}],
}


@fuzz(80)
@given(doc=mutated(TEXT_RECIPE, [p for p in _paths(TEXT_RECIPE) if p[0] != "task"]))
def test_fuzz_text_recipe_values(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.yaml"
        path.write_text(_dump_yaml(doc))
        assert_promised(run_main("validate", path), {0, 2})


# --------------------------------------------------------------------------- profiles

BASE_PROFILE = {"version": 1, "name": "board", "description": "fuzzed", "backend": "onnxruntime",
                "precision": "fp32", "threads": 1, "batch_size": 1, "input_shape": [1, 1, 8, 8],
                "warmup": 2, "runs": 50, "max_seconds": 1.0, "min_runs": 10,
                "build_options": {}, "requires": {"arch": "x86_64", "cpu_flags": ["avx2"]},
                "connection": {"kind": "ssh", "host": "board.local", "user": "me", "port": 22,
                               "workdir": "/tmp/w", "connect_timeout": 1.0, "timeout": 10.0,
                               "runner": "edgecompress", "python": ["python3"]},
                "budgets": {"max_accuracy_drop": 1.0, "max_latency_p90_ms": 5.0}}
PROFILE_PATHS = _paths(BASE_PROFILE)


@fuzz(120)
@given(doc=mutated(BASE_PROFILE, PROFILE_PATHS))
def test_fuzz_profile_in_a_recipe(doc):
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "board.yaml"
        profile.write_text(_dump_yaml(doc))
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(_dump_yaml({**TINY_RECIPE, "targets": [{"profile": str(profile)}]}))
        assert_promised(run_main("validate", recipe), {0, 2})


@fuzz(60)
@given(doc=mutated(BASE_PROFILE, PROFILE_PATHS), data=damaged_bytes(_dump_yaml(BASE_PROFILE)
                                                                     .encode()))
def test_fuzz_profiles_listing_never_fails(doc, data):
    """One broken profile never breaks `edgecompress targets` for the others."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "a-mutated.yaml").write_text(_dump_yaml(doc))
        (folder / "b-damaged.yaml").write_bytes(data)
        (folder / "c-good.yaml").write_text(_dump_yaml(
            {"version": 1, "name": "c-good", "backend": "onnxruntime"}))
        with mock.patch.dict(os.environ, {"EDGECOMPRESS_TARGETS_DIR": str(folder)}), \
                mock.patch("edgecompress.targets.host_reachable", return_value=(False, "stub")):
            code, text = run_main("targets", "--json")
        assert_promised((code, text), {0})
        rows = json.loads(text[text.index("["):])
        assert len(rows) == 3 and any(r["name"] == "c-good" and r["runnable"] for r in rows)


# --------------------------------------------------------------------------- reports

GOOD_REPORT = make_report()
REPORT_PATHS = [p for p in _paths(GOOD_REPORT) if p[0] in ("targets", "gate", "environment",
                                                           "schema_version")]


def _gate_and_compare(folder: Path, report_text: str) -> None:
    path = folder / "report.json"
    path.write_text(report_text)
    good = folder / "good.json"
    good.write_text(json.dumps(GOOD_REPORT))
    junit = folder / "junit.xml"
    code = assert_promised(run_main("gate", path, "--junit", junit), {0, 1, 2})
    if code == 2:
        assert not junit.exists(), "junit.xml written for a refused report"
    else:
        import xml.etree.ElementTree as ET

        ET.parse(junit)  # complete, well-formed XML
    assert_promised(run_main("compare", good, path), {0, 1, 2})
    assert_promised(run_main("compare", path, good), {0, 1, 2})
    assert_nothing_half_written(folder)


@fuzz(150)
@given(doc=mutated(GOOD_REPORT, REPORT_PATHS, extra_keys=False))
def test_fuzz_report_values(doc):
    with tempfile.TemporaryDirectory() as tmp:
        _gate_and_compare(Path(tmp), json.dumps(doc))


@fuzz(80)
@given(data=damaged_bytes(json.dumps(GOOD_REPORT).encode()))
def test_fuzz_report_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        _gate_and_compare(Path(tmp), data.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- ONNX for lint

def _onnx_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return tiny_onnx(Path(tmp) / "m.onnx").read_bytes()


ONNX_BYTES = _onnx_bytes()


@fuzz(100)
@given(data=damaged_bytes(ONNX_BYTES))
def test_fuzz_damaged_onnx_lint(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(data)
        # lint exits 2 for a bad file and for findings alike; 0 when the damage was harmless
        assert_promised(run_main("lint", path), {0, 2})
        assert_promised(run_main("lint", path, "--json", "--require-qdq"), {0, 2})
