"""Hostile and careless input, one hand-made case per class (issue 16).

Every case asserts the promised exit code (0 ok, 1 gate/regression, 2 bad input, 3 missing
runtime), that the message names the culprit (file, key, tensor, factory, global), that no
traceback is printed, and that nothing is half-written. Commands run in-process through
``edgecompress.cli.main`` (the real exit-code mapping) to stay fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_RECIPE, deep_update, run_main
from tests.reports import make_report, target_entry, tiny_onnx


def expect(code_and_text: tuple[int, str], code: int, *fragments: str) -> str:
    got, text = code_and_text
    assert got == code, (got, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    for fragment in fragments:
        assert fragment in text, (fragment, text[-3000:])
    return text


def _yaml(tmp_path: Path, raw, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def _recipe(tmp_path: Path, overrides=None, name: str = "recipe.yaml") -> Path:
    return _yaml(tmp_path, deep_update(TINY_RECIPE, overrides or {}), name)


# --------------------------------------------------------------------------- recipe files

ALIAS_BOMB = """version: 1
teacher:
  kind: factory
  factory: "models.py:make"
  kwargs:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""

RECIPE_CASES = {
    # name: (file bytes, fragments the message must contain besides the file name)
    "binary": (b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), ["binary"]),
    "latin1": ("version: 1\nname: caf\xe9\n".encode("latin-1"), ["not UTF-8", "0xe9"]),
    "empty": (b"", ["empty recipe"]),
    "no_version": (b"name: x\n", ["version", "missing"]),
    "wrong_version": (b"version: 2\n", ["version"]),
    "alias_bomb": (ALIAS_BOMB.encode(), ["alias"]),
    "alias_cycle": (b"version: 1\nteacher:\n  kwargs: &a {x: *a}\n", ["cycle"]),
    "too_deep": (("version: 1\nteacher:\n  kwargs:\n    x: " + "[" * 80 + "]" * 80 + "\n")
                 .encode(), ["nested deeper"]),
    "timestamp": (b"version: 1\nteacher:\n  kwargs:\n    when: 2024-01-01\n",
                  ["teacher.kwargs.when", "date"]),
    "binary_tag": (b"version: 1\nname: !!binary aGVsbG8=\n", ["name", "bytes"]),
    "not_mapping": (b"- a\n- b\n", ["must be a mapping"]),
    "bad_yaml": (b"version: 1\ndata: [unclosed\n", ["not valid YAML"]),
    "epochs_1e18": (b"version: 1\nstages:\n  distill:\n    epochs: 1.0e+18\n",
                    ["stages.distill.epochs", "out of range"]),
    "batch_1e12": (b"version: 1\nstages:\n  finetune:\n    batch_size: 1000000000000\n",
                   ["stages.finetune.batch_size", "out of range"]),
    "threads_1e5": (b"version: 1\ntargets:\n- {name: a, threads: 100000}\n",
                    ["targets.0.threads", "out of range"]),
    "lr_inf": (b"version: 1\nstages:\n  qat:\n    lr: .inf\n", ["stages.qat.lr", "finite"]),
    "lr_nan": (b"version: 1\nstages:\n  finetune:\n    lr: .nan\n",
               ["stages.finetune.lr", "finite"]),
    "lr_zero": (b"version: 1\nstages:\n  distill:\n    lr: 0\n", ["stages.distill.lr"]),
    "seed_negative": (b"version: 1\nseed: -1\n", ["seed", "out of range"]),
    "epochs_string": (b"version: 1\nstages:\n  distill:\n    epochs: many\n",
                      ["stages.distill.epochs"]),
    "unknown_key": (b"version: 1\nstages:\n  distill:\n    temprature: 3\n",
                    ["stages.distill.temprature", "unknown key"]),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_bad_recipe_file(tmp_path, case, command):
    data, fragments = RECIPE_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(data)
    out = tmp_path / "run"
    args = ["validate", path] if command == "validate" else ["run", path, "--out", out]
    start = time.perf_counter()
    expect(run_main(*args), 2, str(path), *fragments)
    assert time.perf_counter() - start < 5, "refusing a bad recipe must be quick"
    assert not out.exists()


def test_oversized_recipe_and_directory(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n# " + "x" * (2 << 20) + "\n")
    expect(run_main("validate", big), 2, str(big), "larger than")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    expect(run_main("validate", folder), 2, str(folder), "not a regular file")


def test_valid_recipe_still_validates(tmp_path):
    text = expect(run_main("validate", _recipe(tmp_path)), 0)
    assert "version: 1" in text


# --------------------------------------------------------------------------- target profiles

GOOD_PROFILE = {"version": 1, "name": "good", "backend": "onnxruntime", "precision": "fp32"}


def _profile(folder: Path, name: str, raw) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(raw))
    return path


def _ssh_profile(**conn) -> dict:
    return {**GOOD_PROFILE, "name": "board", "backend": "tensorrt", "precision": "int8",
            "connection": {"kind": "ssh", "host": "board.local", **conn}}


PROFILE_CASES = {
    "long_host": (_ssh_profile(host="a" * 300), ["connection.host", "not a host name"]),
    "long_label": (_ssh_profile(host="b" * 64 + ".example"), ["connection.host"]),
    "option_host": (_ssh_profile(host="-oProxyCommand=touch /tmp/x"), ["connection.host"]),
    "option_user": (_ssh_profile(user="-oProxyCommand=x"), ["connection.user"]),
    "ssh_config": (_ssh_profile(ssh_config="/tmp/evil_config"),
                   ["connection.ssh_config", "EDGECOMPRESS_TRUST_SSH_CONFIG"]),
    "threads": ({**GOOD_PROFILE, "threads": 10**6}, ["threads", "out of range"]),
    "nan_budget": ({**GOOD_PROFILE, "budgets": {"max_latency_p50_ms": float("nan")}},
                   ["budgets.max_latency_p50_ms"]),
    "binary": (b"\x00\x01\x02version: 1", ["binary"]),
    "latin1": ("version: 1\nname: gr\xfcn\n".encode("latin-1"), ["not UTF-8"]),
    "alias_bomb": (ALIAS_BOMB.replace("teacher:\n  kind: factory\n  factory: \"models.py:make\"\n"
                                      "  kwargs:\n", "build_options:\n  nested:\n").encode(),
                   ["alias"]),
}


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
def test_bad_profile_named_by_a_recipe(tmp_path, case):
    raw, fragments = PROFILE_CASES[case]
    profile = _profile(tmp_path / "targets", case, raw)
    recipe = _recipe(tmp_path, {"targets": [{"profile": str(profile)}]})
    expect(run_main("validate", recipe), 2, str(profile), *fragments)


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
def test_one_bad_profile_does_not_break_the_listing(tmp_path, monkeypatch, case):
    folder = tmp_path / "targets"
    _profile(folder, "good", GOOD_PROFILE)
    _profile(folder, case, PROFILE_CASES[case][0])
    monkeypatch.setenv("EDGECOMPRESS_TARGETS_DIR", str(folder))
    text = expect(run_main("targets", "--json"), 0)
    rows = {r["name"]: r for r in json.loads(text[text.index("["):])}
    assert rows["good"]["runnable"], rows["good"]
    assert not rows[case]["runnable"] and PROFILE_CASES[case][1][0] in rows[case]["reasons"][0]


def test_ssh_config_needs_the_opt_in(tmp_path, monkeypatch):
    from edgecompress.targets import load_profile

    profile = _profile(tmp_path / "targets", "board", _ssh_profile(ssh_config="cfg"))
    monkeypatch.setenv("EDGECOMPRESS_TRUST_SSH_CONFIG", "1")
    assert load_profile(profile).connection.ssh_config == "cfg"
    none = _profile(tmp_path / "targets", "none", _ssh_profile(ssh_config="/dev/null"))
    monkeypatch.delenv("EDGECOMPRESS_TRUST_SSH_CONFIG")
    assert load_profile(none).connection.ssh_config == "/dev/null"


# --------------------------------------------------------------------------- reports

def _report(tmp_path: Path, report, name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return path


REPORT_CASES = {
    "accuracy_string": ({"accuracy": "0.95"}, ["targets.0.accuracy", "str"]),
    "accuracy_nan": ({"accuracy": float("nan")}, ["targets.0.accuracy", "NaN"]),
    "accuracy_above_1": ({"accuracy": 95.0}, ["targets.0.accuracy", "outside"]),
    "size_string": ({"size_bytes": "1 MB"}, ["targets.0.size_bytes"]),
    "p50_string": ({"latency_ms": {"p50": "fast", "p90": 1.0}}, ["targets.0.latency_ms.p50"]),
    "p90_inf": ({"latency_ms": {"p50": 1.0, "p90": float("inf")}},
                ["targets.0.latency_ms.p90"]),
    "latency_list": ({"latency_ms": [1, 2]}, ["targets.0.latency_ms"]),
    "speedup_negative": ({"speedup_vs_teacher": -3}, ["targets.0.speedup_vs_teacher"]),
}


@pytest.mark.parametrize("command", ["gate", "compare"])
@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_bad_report_values(tmp_path, case, command):
    fields, fragments = REPORT_CASES[case]
    good = _report(tmp_path, make_report(), "old.json")
    bad = make_report([target_entry()])
    bad["targets"][0].update(fields)
    path = _report(tmp_path, bad)
    args = ["gate", path] if command == "gate" else ["compare", good, path]
    expect(run_main(*args), 2, str(path), *fragments)
    assert not (tmp_path / "junit.xml").exists(), "junit.xml written for a bad report"


@pytest.mark.parametrize("content,fragments", [
    ("[]", ["a report must be a JSON object"]),
    ("null", ["a report must be a JSON object"]),
    ("{\"schema_version\": 1, \"targets\": [], \"environment\": []}", ["environment"]),
    ("\x00\x01binary", ["not a JSON report"]),
])
def test_malformed_report_documents(tmp_path, content, fragments):
    path = _report(tmp_path, content)
    expect(run_main("gate", path), 2, str(path), *fragments)
    expect(run_main("compare", path, path), 2, str(path), *fragments)


def test_threshold_strings_in_report(tmp_path):
    report = make_report()
    report["gate"]["thresholds"] = {"max_accuracy_drop": "one"}
    path = _report(tmp_path, report)
    expect(run_main("gate", path), 2, "gate.thresholds.max_accuracy_drop")


def test_junit_pointing_at_a_directory(tmp_path):
    path = _report(tmp_path, make_report())
    folder = tmp_path / "junit_dir"
    folder.mkdir()
    expect(run_main("gate", path, "--junit", folder), 2, "--junit", str(folder))
    expect(run_main("gate", path, "--junit", "/proc/no/junit.xml"), 2, "--junit")


def test_nan_accuracy_is_not_a_silent_pass_in_compare(tmp_path):
    old = _report(tmp_path, make_report(), "old.json")
    new = make_report()
    new["targets"][0]["accuracy"] = float("nan")
    expect(run_main("compare", old, _report(tmp_path, new, "new.json")), 2, "NaN")


def test_good_reports_still_judged(tmp_path):
    path = _report(tmp_path, make_report())
    expect(run_main("gate", path), 0, "PASSED")
    expect(run_main("gate", path, "--max-accuracy-drop", "1"), 1, "accuracy drop")
    expect(run_main("compare", path, path), 0, "no regression")


# --------------------------------------------------------------------------- ONNX for lint

def _external(tmp_path: Path) -> Path:
    import onnx

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = tiny_onnx(model_dir / "m.onnx")
    proto = onnx.load(str(path))
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return path


def test_lint_external_data_missing(tmp_path):
    path = _external(tmp_path)
    (path.parent / "weights.bin").unlink()
    expect(run_main("lint", path), 2, str(path), "weights.bin", "not found")


def test_bench_external_data_missing(tmp_path):
    path = _external(tmp_path)
    (path.parent / "weights.bin").unlink()
    profile = _profile(tmp_path / "targets", "good", GOOD_PROFILE)
    out = tmp_path / "out"
    expect(run_main("bench", path, "--target", profile, "--out", out), 2, str(path),
           "weights.bin")
    assert not out.exists()


def test_lint_external_data_escaping_its_folder(tmp_path):
    import onnx

    path = _external(tmp_path)
    (path.parent / "weights.bin").rename(tmp_path / "outside.bin")
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(proto, str(path))
    expect(run_main("lint", path), 2, str(path), "outside the model's folder")


def test_lint_external_data_truncated(tmp_path):
    path = _external(tmp_path)
    (path.parent / "weights.bin").write_bytes(b"\x00" * 8)
    expect(run_main("lint", path), 2, str(path), "past the end")


def test_lint_external_data_present_is_checked(tmp_path):
    expect(run_main("lint", _external(tmp_path)), 0, "PASSED")


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10, b"not onnx at all"])
def test_lint_garbage(tmp_path, content):
    path = tmp_path / "g.onnx"
    path.write_bytes(content)
    code, text = run_main("lint", path)
    assert code == 2 and "Traceback" not in text and str(path) in text, text


def test_lint_missing_and_directory(tmp_path):
    expect(run_main("lint", tmp_path / "absent.onnx"), 2, "absent.onnx")
    expect(run_main("lint", tmp_path), 2, str(tmp_path), "not a regular file")


# --------------------------------------------------------------------------- run directories

@pytest.mark.parametrize("content", ["[]", "null", "\"text\"", "42"])
def test_run_json_not_an_object(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content)
    expect(run_main("run", _recipe(tmp_path), "--out", out), 2, "run.json",
           "not an edgecompress run.json")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_run_json_is_never_deleted(tmp_path, overwrite):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"identity": "someone else's"}))
    (out / "thesis.tex").write_text("precious")
    args = ["run", _recipe(tmp_path), "--out", out] + (["--overwrite"] if overwrite else [])
    expect(run_main(*args), 2, "run.json", "not an edgecompress run.json")
    assert (out / "thesis.tex").read_text() == "precious"


def test_out_not_writable(tmp_path):
    expect(run_main("run", _recipe(tmp_path), "--out", "/proc/edgecompress-run"), 2,
           "/proc/edgecompress-run")


def test_bench_out_not_writable(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    profile = _profile(tmp_path / "targets", "quick", {**GOOD_PROFILE, "runs": 50, "warmup": 1,
                                                       "max_seconds": 0.2, "min_runs": 10})
    expect(run_main("bench", model, "--target", profile, "--out", "/proc/edgecompress-bench"), 2,
           "/proc/edgecompress-bench")


# --------------------------------------------------------------------------- models

def test_factory_calling_sys_exit(tmp_path):
    models = tmp_path / "exiting.py"
    models.write_text("import sys\ndef make(num_classes=10):\n    sys.exit(7)\n")
    spec = f"{models}:make"
    recipe = _recipe(tmp_path, {"teacher": {"kind": "factory", "factory": spec}})
    out = tmp_path / "run"
    expect(run_main("run", recipe, "--out", out), 2, spec, "SystemExit")
    assert not out.exists()


def test_factory_module_exiting_on_import(tmp_path):
    models = tmp_path / "exit_on_import.py"
    models.write_text("raise SystemExit(9)\n")
    spec = f"{models}:make"
    recipe = _recipe(tmp_path, {"teacher": {"kind": "factory", "factory": spec}})
    expect(run_main("run", recipe, "--out", tmp_path / "run"), 2, spec, "SystemExit")


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo PWNED",))


def test_malicious_pickle_names_the_global(tmp_path):
    import torch

    factory = tmp_path / "mymodels.py"
    factory.write_text("import torch.nn as nn\ndef make(num_classes=10):\n"
                       "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    weights = tmp_path / "evil.pt"
    torch.save({"0.weight": torch.zeros(1), "payload": _Exploit()}, weights)
    recipe = _recipe(tmp_path, {"teacher": {"kind": "factory", "factory": f"{factory}:make",
                                            "weights": str(weights)}})
    text = expect(run_main("run", recipe, "--out", tmp_path / "run"), 2, str(weights),
                  "system", "trust_pickle")
    assert "will likely succeed" not in text and "weights_only" not in text
    assert "corrupt" not in text


# --------------------------------------------------------------------------- exports

def test_fp32_onnx_export_carries_no_local_paths(tmp_path):
    import torch

    from edgecompress.export.onnx import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(144, 10))
    path = export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "m.onnx")
    data = path.read_bytes()
    for needle in (str(Path(torch.__file__).parent), str(Path.cwd()), str(Path.home()),
                   "stack_trace", "site-packages", __file__):
        assert needle.encode() not in data, needle


def test_text_onnx_export_carries_no_local_paths(tmp_path):
    pytest.importorskip("transformers", reason="transformers not installed (extra: text)")
    from edgecompress.text.data import collate
    from edgecompress.text.export import export_onnx
    from edgecompress.text.models import load_hf
    from tests.text_fixtures import tiny_bert_dir

    model, tok = load_hf(tiny_bert_dir(tmp_path / "bert", layers=1, hidden=32, ffn=64))
    ids, mask = collate(tok(["a great film", "dull"])["input_ids"], tok.pad_token_id)
    path = export_onnx(model, (ids, mask), tmp_path / "model.onnx",
                       max_seq=model.config.max_position_embeddings)
    data = path.read_bytes()
    for needle in ("stack_trace", "site-packages", str(Path(__file__).parent)):
        assert needle.encode() not in data, needle
