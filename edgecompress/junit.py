"""JUnit XML from the gate's checks, so any CI system (GitHub, GitLab, Jenkins) shows the verdict.

One ``<testcase>`` per target and check: ``classname`` is ``edgecompress.<target>``, ``name`` the
check (``status``, ``accuracy_drop``, ``latency_p90``, ...). A violation is a ``<failure>``; a
check that could not be judged (no teacher, target skipped) is ``<skipped>`` with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress.io import atomic_write_bytes

SUITE_NAME = "edgecompress-gate"


def render_junit(gate: Mapping[str, Any], *, suite: str = SUITE_NAME) -> bytes:
    """The XML document (UTF-8 bytes) for a report's ``gate`` section."""
    checks = list(gate.get("checks") or [])
    failures = sum(c["outcome"] == "failed" for c in checks)
    skipped = sum(c["outcome"] == "skipped" for c in checks)
    root = ET.Element("testsuites", name="edgecompress", tests=str(len(checks)),
                      failures=str(failures), errors="0", skipped=str(skipped))
    suite_el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)),
                             failures=str(failures), errors="0", skipped=str(skipped))
    for c in checks:
        case = ET.SubElement(suite_el, "testcase", classname=f"edgecompress.{c['target']}",
                             name=c["check"], time="0")
        if c["outcome"] == "failed":
            failure = ET.SubElement(case, "failure", message=c["message"], type="GateViolation")
            failure.text = (f"value: {c.get('value')!r}\nlimit: {c.get('limit')!r}\n"
                            f"{c['message']}")
        elif c["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=c["message"])
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(gate: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`render_junit` atomically to ``path``."""
    atomic_write_bytes(path, render_junit(gate))
    return Path(path)
