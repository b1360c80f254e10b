"""Memory and throughput of text data kept on disk: 20,000 vs 200,000 reviews in one CSV.

For each size, in a fresh process, through the library's own functions: the data stage's work
(scan + seeded split, :func:`edgecompress.text.data.load_text_dataset`), a WordPiece tokenizer
trained on the train split (what a ``scratch`` teacher does, read a chunk at a time), and one
training epoch of a tiny BERT (2 layers, hidden 64, so the epoch measures the data path more than
the model) on shuffled, tokenized batches. Reported per size: peak RSS (``VmHWM``, the kernel's
high-water mark), RSS right after the imports (torch and transformers alone are most of it), the
growth above that, seconds of each step and texts/s of the epoch.

``--in-memory`` measures the old way for comparison: every row read into Python lists and every
text tokenized up front (what ``edgecompress.text.data`` did before texts stayed on disk).

    python benchmarks/text_data_scale.py --json benchmarks/results/text_data_scale.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

SIZES = (20_000, 200_000)
WORDS = ("the film story cast plot a is and this movie was with its ending script very quite "
         "really acting scene music camera director actor character moment dialogue pace "
         "great wonderful moving brilliant funny charming superb dull boring awful clumsy "
         "tedious bland messy").split()


def _csv(root: Path, rows: int) -> Path:
    path = root / f"reviews-{rows}.csv"
    if not path.exists():
        rng = random.Random(rows)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in range(rows):
                words = rng.choices(WORDS, k=rng.randint(40, 90))
                writer.writerow([" ".join(words), ("neg", "pos", "mixed")[i % 3]])
        tmp.rename(path)
    return path


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(path: Path, out: Path, in_memory: bool, batch_size: int, max_length: int) -> None:
    import numpy as np
    import torch

    # edgecompress first: it makes the CUDA torchvision wheel importable beside the CPU torch,
    # which transformers imports.
    from edgecompress.text.data import batches, collate, encode, load_text_dataset
    from edgecompress.text.models import train_wordpiece
    from edgecompress.text.recipe import TextDataConfig
    from transformers import BertConfig, BertForSequenceClassification  # isort: skip

    torch.set_num_threads(1)
    base_kib = _rss_kib("VmRSS")
    timings = {}
    start = time.perf_counter()
    bundle = load_text_dataset(TextDataConfig(path=path, max_length=max_length), seed=0)
    timings["data_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if in_memory:
        texts = [t for chunk in bundle.train.texts.chunks() for t in chunk]
        tok = train_wordpiece(texts, 8000, max_length)
        enc = tok(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                  return_token_type_ids=False)
        ids = [list(x) for x in enc["input_ids"]]
    else:
        tok = train_wordpiece(bundle.train.texts.chunks(), 8000, max_length)
    timings["tokenizer_s"] = time.perf_counter() - start
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=max_length,
        num_labels=bundle.num_classes, pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pad = int(tok.pad_token_id or 0)
    if in_memory:
        order = np.random.default_rng(0).permutation(len(ids))
        steps = ((*collate([ids[i] for i in order[s:s + batch_size]], pad),
                  torch.as_tensor(bundle.train.labels[order[s:s + batch_size]]))
                 for s in range(0, len(order), batch_size))
    else:
        steps = batches(encode(tok, bundle.train, max_length), batch_size, pad, shuffle=True)
    start, seen = time.perf_counter(), 0
    for input_ids, mask, labels in steps:
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(labels)
    timings["epoch_s"] = time.perf_counter() - start
    out.write_text(json.dumps({
        "rows": bundle.info["rows"], "train": len(bundle.train), "in_memory": in_memory,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "rss_after_imports_mib": round(base_kib / 1024, 1),
        "peak_rss_mib": round(_rss_kib("VmHWM") / 1024, 1),
        "growth_mib": round((_rss_kib("VmHWM") - base_kib) / 1024, 1),
        **{k: round(v, 2) for k, v in timings.items()},
        "texts_per_s": round(seen / timings["epoch_s"], 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/edgecompress-text-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--in-memory", action="store_true", help="also the old, in-memory way")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("CSV", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.child[2] == "memory",
              args.batch_size, args.max_length)
        return
    from edgecompress.environment import environment

    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    modes = ["disk", "memory"] if args.in_memory else ["disk"]
    for size in args.sizes:
        path = _csv(args.root, size)
        for mode in modes:
            out = args.root / f"result-{size}-{mode}.json"
            subprocess.run([sys.executable, __file__, "--child", str(path), str(out), mode,
                            "--batch-size", str(args.batch_size), "--max-length",
                            str(args.max_length)], check=True)
            results.append(json.loads(out.read_text()))
            print(json.dumps(results[-1]), flush=True)
    print("\n| rows | how | file MiB | data s | tokenizer s | epoch s | texts/s | peak RSS MiB |"
          " growth over imports MiB |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {'in memory' if r['in_memory'] else 'on disk'} | "
              f"{r['file_mib']} | {r['data_s']} | {r['tokenizer_s']} | {r['epoch_s']} | "
              f"{r['texts_per_s']} | {r['peak_rss_mib']} | {r['growth_mib']} |")
    disk = {r["rows"]: r for r in results if not r["in_memory"]}
    summary = {}
    if len(disk) >= 2:
        small, large = disk[min(disk)], disk[max(disk)]
        summary = {"peak_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
                   "growth_ratio": round(large["growth_mib"] / max(small["growth_mib"], 1), 3)}
        print(f"\npeak RSS ratio {max(disk):,} / {min(disk):,} rows on disk: "
              f"{summary['peak_rss_ratio']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment(), "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
