"""report.html tells the compression story for both families (issue 12, item 5): the sections'
content from report.json alone, readable plots, and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import pytest

from edgecompress import report_story as story
from edgecompress.report_sections import HEADINGS
from tests.reports import image_story_report, make_report, target_entry, text_story_report

pytest.importorskip("matplotlib", reason="matplotlib not installed (extra: report)")

from edgecompress.report_html import PAGE_HEADINGS, render_html, write_html_report  # noqa: E402

ALL_HEADINGS = [*HEADINGS.values(), *PAGE_HEADINGS.values()]


def _section(page: str, key: str) -> str:
    match = re.search(f"<section id='{key}'>(.*?)</section>", page, re.S)
    assert match, f"no {key} section"
    return match.group(1)


@pytest.fixture(scope="module")
def image_page() -> str:
    return render_html(image_story_report())


@pytest.fixture(scope="module")
def text_page() -> str:
    return render_html(text_story_report())


def test_model_ladder_for_both_families(image_page, text_page):
    steps = [r["step"] for r in story.model_ladder(image_story_report())]
    assert steps == ["teacher", "distilled", "baseline", "pruned", "int8"]
    ladder = _section(image_page, "ladder")
    assert "student, distilled (FP32), carried forward" in ladder
    assert "400 (1/2.5)" in ladder and "4,000" in ladder  # the unpruned (distilled) shape
    assert "100 (1/10.0)" in ladder and "97.0 %" in ladder and "95.5 %" in ladder
    assert "29.3 KiB (onnxruntime engine)" in ladder and "93.0 %" in ladder
    assert "-4.00 pp" in ladder and "not exported" in ladder
    text = _section(text_page, "ladder")
    assert [r["step"] for r in story.model_ladder(text_story_report())] == [
        "teacher", "distilled", "pruned", "int8"]
    assert "16,674" in text and "12,498" in text and "139.5 KiB (FP32 ONNX)" in text
    assert "96.9 %" in text and "90.0 %" in text


def test_distillation_gain_or_why_it_is_missing(image_page, text_page):
    section = _section(image_page, "distillation")
    assert "Distillation gain over the hard-label baseline: +1.50 pp" in section
    assert "distilled 95.5 % vs hard labels only 94.0 %" in section
    assert "Carried forward: the distilled student" in section
    text = _section(text_page, "distillation")
    assert "not measured (no hard-label baseline ran)" in text
    assert "Teacher layers kept in the student: [1] (student 1 &larr; teacher 2)" in text


def test_pruning_plan_channels_and_heads(image_page, text_page):
    section = _section(image_page, "pruning")
    assert "plan uniform, importance l2, round to 8" in section
    assert "<td>conv1</td><td>channels</td><td class=n>64</td><td class=n>40</td>" in section
    assert ">conv2<" not in section and "1 of 2 groups thinned" in section
    assert "Iterative steps" in section and "40.0 %" in section
    text = _section(text_page, "pruning")
    assert "<td>layer 0 attention</td><td>heads</td><td class=n>4</td><td class=n>2</td>" in text
    assert "<td>FFN (every layer)</td><td>width</td><td class=n>64</td><td class=n>32</td>" in text
    assert "80.0 % right after pruning" in text and "92.0 % before" in text


def test_qat_vs_ptq_choice(image_page, text_page):
    section = _section(image_page, "quantization")
    assert "<b>QAT</b>" in section and "val: QAT 94.0 %, PTQ 91.0 % (minmax calibration)" in section
    assert "93.5 %" in section and "-1.50 pp" in section
    assert "tensorrt" in section and "skipped: tensorrt not installed" in section
    text = _section(text_page, "quantization")
    assert "<b>PTQ</b>" in text and "ptq_dynamic at export" in text


def test_sensitivity_and_fp32_fallbacks(image_page, text_page):
    section = _section(image_page, "fallbacks")
    assert "<td>preset ort-x86-avx2</td><td>stem.0</td>" in section
    assert "accuracy criterion (max drop 2.00 pp on validation) met" in section
    assert "<td>stem.0</td><td class=n>90.0 %</td><td class=n>6.00 pp</td>" in section
    assert section.index(">stem.0<") < section.index(">fc<")  # most sensitive first
    text = _section(text_page, "fallbacks")
    assert "<td>engine int8</td><td>none</td>" in text and "No layer sensitivity" in text


def test_int8_kernel_census(image_page, text_page):
    section = _section(image_page, "census")
    assert "<td>QLinearConv</td><td class=n>10</td>" in section
    assert "<b>11</b>" in section and "stem.0" in section
    text = _section(text_page, "census")
    assert "teacher + quantize_dynamic" in text
    assert "<td>QAttention</td><td class=n>1</td><td class=n>2</td>" in text


def test_environment_and_percentages_everywhere(image_page):
    section = _section(image_page, "environment")
    for fact in ("Test CPU", "avx2", "x86_64", "2.5 GHz", "onnxruntime", "1.32.0", "2.13.0"):
        assert fact in section
    targets = _section(image_page, "targets")
    assert "95.0 %" in targets and "0.9500" not in image_page and "0.9700" not in image_page


def test_missing_blocks_are_omitted_not_a_crash():
    bare = make_report()
    for key in ("stages", "teacher", "student", "environment", "dataset"):
        bare.pop(key)
    page = render_html(bare)
    assert "<h2>Targets</h2>" in page and "<section id='ladder'>" not in page
    assert "<section id='environment'>" not in page
    # a bench report: null teacher/student, no stages, accuracy unknown
    bench = make_report([target_entry(accuracy=None, teacher_accuracy=None,
                                      teacher_latency_ms=None, teacher_size_bytes=None)])
    bench.update(teacher=None, student=None, distillation=None, quantization=None)
    assert "<section id='pruning'>" not in render_html(bench)


def _image(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_plots_are_large_and_the_teacher_is_shown_once():
    from edgecompress.report_plots import plot_sizes, size_bars

    report = image_story_report()
    bars = size_bars(report)
    assert [b[2] for b in bars].count("teacher") == 1 and len(bars) == 3
    assert _image(plot_sizes(report)).size[0] >= 800  # 10 in at 110 dpi, cropped tight


@pytest.mark.parametrize("values", [[0.03, 0.05, 0.2, 0.7], [0.01, 3.0, 500.0], [1.0, 1.5, 2.0]])
def test_latency_axis_tick_labels_do_not_overlap(values):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from edgecompress.report_plots import scale_axis

    fig, ax = plt.subplots(figsize=(10, 5))
    ax.scatter(values, range(len(values)))
    scale = scale_axis(ax, values, "x")
    assert scale == ("linear" if max(values) / min(values) < 8 else "log")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and t.get_visible()]
    assert len(labels) >= 2
    assert all("^" not in t.get_text() and "e" not in t.get_text() for t in labels)
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), \
        [t.get_text() for t in labels]
    plt.close(fig)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK_IMAGES = """<script>window.addEventListener('load', () => {
const out = document.createElement('pre'); out.id = 'decoded';
out.textContent = Array.from(document.images).map(i => i.naturalWidth).join(',');
document.body.appendChild(out);});</script>"""


@pytest.mark.parametrize("family", ["image", "text"])
def test_report_renders_in_headless_chromium(family, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not found (make chromium, or apt-get install chromium)")
    report = image_story_report() if family == "image" else text_story_report()
    samples = {t["name"]: {"student": [0.1, 0.12, 0.11] * 10, "teacher": [0.4, 0.5] * 15}
               for t in report["targets"]}
    path = write_html_report(report, tmp_path / "report.html", samples)
    # The check script is test-only: appended here, never part of the shipped page.
    path.write_text(path.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", path.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for heading in ALL_HEADINGS:
        assert f"<h2>{heading}</h2>" in dom, heading
    widths = re.search(r"<pre id=\"decoded\">([\d,]*)</pre>", dom)
    assert widths, "the image check script did not run"
    decoded = [int(w) for w in widths.group(1).split(",")]
    assert len(decoded) == 3 and all(w >= 800 for w in decoded), decoded


def test_report_md_tells_the_same_story():
    from edgecompress.report import render_markdown

    md = render_markdown(image_story_report())
    assert "| teacher | 97.00 % | 1,000 | 10,000 | 2,000,000 B |" in md
    assert "| student (distilled, pruned) | 95.00 % | 100 | 1,000 | 100,000 B |" in md
    assert ("| student int8 (cpu-int8, onnxruntime engine) | 93.00 % | 100 | 1,000 | 30,000 B |"
            in md)
    assert "Accuracy criterion (ort-x86-avx2, max drop 2 pp on validation) met: FP32 [none]: " \
           "drop 6.00 pp; FP32 [stem.0]: drop 1.50 pp." in md
    assert "Environment: x86_64 ISA avx2; 2 logical cores; 1 torch threads; Python 3.11; " \
           "onnxruntime 1.32.0, torch 2.13.0." in md
    text = render_markdown(text_story_report())
    assert "| student (distilled) | 92.00 % | 16,674 | 2,097,152 | - |" in text
    assert "Pruning kept: layer 0 attention 4 -> 2 heads; FFN (every layer) 64 -> 32 width." in text
    assert "Quantization: ptq_dynamic at export (PTQ; this family has no qat stage)." in text
