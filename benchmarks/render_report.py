"""Render a run's report.html in headless Chromium and save a screenshot (PNG).

Proves the self-contained HTML (tables + base64 plots) displays in a real browser with no
network: Chromium runs with networking features off and loads the file:// URL.

    .venv/bin/python benchmarks/render_report.py runs/demo [--png runs/demo/report.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def render(html: Path, png: Path, *, width: int = 1200, height: int = 2400,
           chromium: str = "/usr/bin/chromium", timeout: float = 120) -> Path:
    """Screenshot ``html`` into ``png``; raises if Chromium fails or writes nothing."""
    exe = chromium if Path(chromium).exists() else shutil.which("chromium")
    if not exe:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, *CHROMIUM_FLAGS, f"--screenshot={png.resolve()}",
           f"--window-size={width},{height}", html.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        raise SystemExit(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return png


def main() -> None:
    """Parse arguments, render, print the PNG path."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="run (or bench --out) directory with report.html")
    ap.add_argument("--png", type=Path, default=None, help="default: RUN_DIR/report.png")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args()
    html = args.run_dir / "report.html"
    if not html.is_file():
        sys.exit(f"{html}: not found (is matplotlib installed? it is the 'report' extra)")
    png = render(html, args.png or args.run_dir / "report.png", width=args.width,
                 height=args.height)
    print(f"screenshot: {png} ({png.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
