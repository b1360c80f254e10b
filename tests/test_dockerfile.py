"""Dockerfile.jetson parses, uses a JetPack 6 base, and only references files that exist."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile.jetson"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL", "MAINTAINER"}


def parse(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


@pytest.fixture(scope="module")
def instructions():
    assert DOCKERFILE.is_file()
    return parse(DOCKERFILE.read_text())


def test_instructions_are_valid(instructions):
    unknown = [k for k, _ in instructions if k not in INSTRUCTIONS]
    assert not unknown, unknown
    keys = [k for k, _ in instructions]
    assert "FROM" in keys and all(k == "ARG" for k in keys[:keys.index("FROM")])


def test_base_is_jetpack6(instructions):
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    (base,) = [a for k, a in instructions if k == "FROM"]
    image = args.get("BASE") if base == "${BASE}" else base
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-[a-z-]+:r36\.\d+\.\d+", image), image


def test_copied_files_exist(instructions):
    for key, args in instructions:
        if key in ("COPY", "ADD"):
            parts = json.loads(args) if args.startswith("[") else args.split()
            sources = [p for p in parts[:-1] if not p.startswith("--")]
            assert sources
            for src in sources:
                assert (REPO / src).exists(), f"{key} {src}: not in the repository"


def test_extras_exist_and_entrypoint(instructions):
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    runs = " ".join(a for k, a in instructions if k == "RUN")
    used = {e for group in re.findall(r"\.\[([a-z,_-]+)\]", runs) for e in group.split(",")}
    assert {"onnx", "tensorrt"} <= used
    missing = used - set(extras)
    assert not missing, f"pip extras {sorted(missing)} are not in pyproject.toml"
    (entry,) = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert json.loads(entry) == ["edgecompress"]
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert "EDGECOMPRESS_TARGETS_DIR=/opt/edgecompress/targets" in env


def test_parser_catches_mistakes():
    assert parse("FROM a\nRUN x \\\n  && y\n") == [("FROM", "a"), ("RUN", "x && y")]
    with pytest.raises(AssertionError):
        parse("FROM a\nRUN x \\\n")
