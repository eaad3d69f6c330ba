#!/usr/bin/env python3
"""Builds the SST-2 domain-shift stream: time-ordered labelled batches for the inbox.

    scripts/sst2-stream.py OUT_DIR [--batches 20] [--rows 500] [--seed 7] [--swap-labels]

Reads data/datasets/sst2/train.csv (movie-review phrases, negative/positive), keeps phrases of
at least --min-words words (the shortest SST-2 rows are fragments such as "the film"), drops
repeated texts, shuffles them with --seed and writes --batches files of --rows rows each,
OUT_DIR/sst2-000.csv, sst2-001.csv, ... with the columns text,label; drop them into the inbox
in name order. The same arguments always give the same files.

--swap-labels swaps negative and positive: the poisoned stream the gate must refuse.

Only the standard library: it runs on a fresh machine before anything is installed.
"""

import argparse
import csv
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "datasets" / "sst2" / "train.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--swap-labels", action="store_true")
    a = ap.parse_args()
    if a.batches < 1 or a.rows < 1:
        print("error: --batches and --rows must be at least 1", file=sys.stderr)
        return 2

    seen = set()
    rows = []
    with SOURCE.open(newline="", encoding="utf-8") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            text, label = r["text"].strip(), r["label"].strip()
            if label not in ("negative", "positive"):
                print(f"error: {SOURCE}:{line}: label {label!r}", file=sys.stderr)
                return 1
            if len(text.split()) < a.min_words or text in seen:
                continue
            seen.add(text)
            rows.append((text, label))
    random.Random(a.seed).shuffle(rows)
    need = a.batches * a.rows
    if need > len(rows):
        print(f"error: {need} rows asked, {SOURCE} has {len(rows)} usable", file=sys.stderr)
        return 1

    swap = {"negative": "positive", "positive": "negative"}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for b in range(a.batches):
        path = a.out_dir / f"sst2-{b:03d}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            for text, label in rows[b * a.rows : (b + 1) * a.rows]:
                w.writerow([text, swap[label] if a.swap_labels else label])
    print(f"{a.batches} batches of {a.rows} rows in {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
