#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth/.pt from torch.save) into a .safetensors state dict that
`harness` loads (teachers' `checkpoint = "..."`, `harness eval --checkpoint`).

    python scripts/pth_to_safetensors.py IN.pth OUT.safetensors [--key model] [--trust-pickle]

Uses the torch of the harness venv (~/.cache/kd-harness/venv/bin/python). mdistiller/RepDistiller
keep the weights under "model" (the default key; "state_dict" and a bare state dict also work).
A `module.` prefix (DataParallel) is stripped; BatchNorm's num_batches_tracked is dropped.
Checkpoints that pickle more than tensors (argparse Namespace, numpy scalars — mdistiller's do)
need --trust-pickle: that unpickles arbitrary objects, so only use it on files you trust.
"""
import argparse
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def save_safetensors(tensors, path):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in DTYPES:
            raise SystemExit(f"{name}: unsupported dtype {t.dtype}")
        data = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--key", default=None, help="entry holding the state dict (default: model, then state_dict)")
    ap.add_argument("--trust-pickle", action="store_true", help="allow non-tensor objects in the pickle")
    a = ap.parse_args()
    try:
        obj = torch.load(a.input, map_location="cpu", weights_only=not a.trust_pickle)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure clearly
        hint = "" if a.trust_pickle else " (if it pickles more than tensors, rerun with --trust-pickle for a file you trust)"
        raise SystemExit(f"{a.input}: cannot load: {e}{hint}")
    if isinstance(obj, dict) and a.key is not None:
        if a.key not in obj:
            raise SystemExit(f"{a.input}: no key {a.key!r}; keys: {sorted(obj)[:20]}")
        obj = obj[a.key]
    elif isinstance(obj, dict):
        for k in ("model", "state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SystemExit(f"{a.input}: no state dict of tensors found (use --key)")
    out = {}
    for k, v in obj.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    save_safetensors(out, a.output)
    print(f"wrote {len(out)} tensors to {a.output}")


if __name__ == "__main__":
    sys.exit(main())
