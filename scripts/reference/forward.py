"""Runs a reference model on given weights and input, in eval mode, and saves what it computes.

usage: forward.py MODEL NUM_CLASSES WEIGHTS.safetensors INPUT.safetensors OUT.safetensors

The weights load with strict=True except for BN `num_batches_tracked` buffers (the harness does
not keep them; PyTorch ignores them in eval mode). OUT holds `logits`, `pooled`, `feat.<i>` and
`preact.<i>`.
"""
import sys

import torch

import models
import st

name, classes, wpath, xpath, opath = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
torch.manual_seed(0)
m = models.build(name, classes)
missing, unexpected = m.load_state_dict(st.load(wpath), strict=False)
missing = [k for k in missing if not k.endswith("num_batches_tracked")]
if missing or unexpected:
    raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
m.eval()
with torch.no_grad():
    logits, feats, preact, pooled = m(st.load(xpath)["x"])
out = {"logits": logits, "pooled": pooled}
out.update({f"feat.{i}": f for i, f in enumerate(feats)})
out.update({f"preact.{i}": f for i, f in enumerate(preact)})
st.save(out, opath)
