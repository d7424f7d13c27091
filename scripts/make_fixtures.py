"""Writes the tiny CIFAR "python version" fixtures under tests/fixtures/ (committed).

Run once with any Python that has numpy: `python scripts/make_fixtures.py`.
Pixel bytes follow a formula the Rust tests recompute: x[i, j] = (i * 31 + j * 7 + split) % 256,
with split 0 for train and 1 for test; fine label i % 100 (CIFAR-100) or i % 10 (CIFAR-10).
CIFAR-100 is pickled at protocol 2 (numpy's bytes then go through `_codecs.encode`, as when
Python 3 re-pickles the official Python 2 files); CIFAR-10 at protocol 4 (BINBYTES, FRAME, MEMOIZE).
"""
import os
import pickle

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def images(n, split):
    i = np.arange(n).reshape(-1, 1)
    j = np.arange(3072).reshape(1, -1)
    return ((i * 31 + j * 7 + split) % 256).astype(np.uint8)


def main():
    d100 = os.path.join(ROOT, "cifar-100-python")
    os.makedirs(d100, exist_ok=True)
    for name, n, split in [("train", 12, 0), ("test", 5, 1)]:
        obj = {b"filenames": [b"x.png"] * n, b"batch_label": b"training batch",
               b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)],
               b"data": images(n, split)}
        with open(os.path.join(d100, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)
    d10 = os.path.join(ROOT, "cifar-10-batches-py")
    os.makedirs(d10, exist_ok=True)
    start = 0
    for k in range(1, 6):
        n = 3
        data = images(start + n, 0)[start:]
        obj = {"batch_label": "training batch %d of 5" % k, "labels": [i % 10 for i in range(start, start + n)],
               "data": data, "filenames": ["x.png"] * n}
        with open(os.path.join(d10, "data_batch_%d" % k), "wb") as f:
            pickle.dump(obj, f, protocol=4)
        start += n
    obj = {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in range(4)], "data": images(4, 1)}
    with open(os.path.join(d10, "test_batch"), "wb") as f:
        pickle.dump(obj, f, protocol=4)


if __name__ == "__main__":
    main()
