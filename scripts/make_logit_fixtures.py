"""Writes the logit-method fixtures under tests/fixtures/logit/ (committed).

    python scripts/make_logit_fixtures.py PATH/TO/ref_logit.py

`example.npz` is the spec's worked example (methods-logit.md §0.2); `random.npz` is a random
batch (N=16, C=100, logits ×3, K=3 teachers, mixed targets, 16 dense votes, 32-d features).
Each gets a `.json` with the reference implementation's values at epoch 240 and at epoch 1.
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "logit")


def main(ref):
    os.makedirs(ROOT, exist_ok=True)
    ex = os.path.join(ROOT, "example.npz")
    subprocess.check_call([sys.executable, ref, "--make-example", ex])
    rng = np.random.default_rng(0)
    n, c, k = 16, 100, 3
    y = rng.integers(0, c, n)
    teachers = rng.normal(size=(k, n, c)) * 3
    a = rng.uniform(size=(n, 1))
    perm = rng.permutation(n)
    onehot = np.eye(c)[y]
    np.savez(os.path.join(ROOT, "random.npz"),
             student=rng.normal(size=(n, c)) * 3, teacher=teachers[0], teachers=teachers, labels=y,
             soft_targets=a * onehot + (1 - a) * onehot[perm], dense_argmax=rng.integers(0, c, (n, 16)),
             features=rng.normal(size=(n, 32)))
    for name in ["example", "random"]:
        npz = os.path.join(ROOT, name + ".npz")
        out = {}
        for epoch in [240, 1]:
            res = json.loads(subprocess.check_output([sys.executable, ref, npz, "--epoch", str(epoch)]))
            out["epoch%d" % epoch] = res
        with open(os.path.join(ROOT, name + ".json"), "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
