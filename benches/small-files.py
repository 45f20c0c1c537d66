#!/usr/bin/env python3
"""Case (s)'s tree: COUNT files of 1-8 KiB (seeded sizes and content) in directories of 100.

Usage: benches/small-files.py ROOT COUNT  (ROOT must not exist)."""
import os
import random
import sys

root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(23)
os.makedirs(root)
for i in range(count):
    folder = os.path.join(root, f"d{i // 100:05d}")
    if i % 100 == 0:
        os.mkdir(folder)
    with open(os.path.join(folder, f"f{i % 100:02d}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
