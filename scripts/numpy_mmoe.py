#!/usr/bin/env python3
"""Reproduces a one-layer MMoE bundle's predictions with numpy from the documented
bundle layout (README, "Bundles"): no multigate code, only `model.safetensors`, the
bundle's `spec.toml` and the encoded inputs.

    python3 scripts/numpy_mmoe.py BUNDLE ENCODED.csv PREDICTIONS.csv

ENCODED.csv is `multigate encode BUNDLE DATA`, PREDICTIONS.csv `multigate predict
BUNDLE DATA`. Exits 1 when any prediction differs by more than 1e-5.
"""
import csv
import sys
import tomllib

import numpy as np
from safetensors.numpy import load_file

ACT = {
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "linear": lambda x: x,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}


def rows(path):
    with open(path, newline="") as f:
        r = list(csv.reader(f))
    return r[0], np.array([[float(v) for v in row] for row in r[1:]])


def main(bundle, encoded, predictions):
    spec = tomllib.load(open(f"{bundle}/spec.toml", "rb"))
    w = load_file(f"{bundle}/model.safetensors")
    layers = spec["layers"]
    assert len(layers) == 1 and layers[0]["kind"] == "mmoe", "this reproduction covers one MMoE layer"
    assert not spec.get("crosses"), "crosses are not covered"
    _, enc = rows(encoded)
    # The input row: features in spec order (embedding rows, then dense values).
    cat = [f for f in spec["features"] if f["type"] == "categorical"]
    pieces, ci, di = [], 0, len(cat)
    for f in spec["features"]:
        if f["type"] == "categorical":
            pieces.append(w[f"features.{f['name']}.embedding"][enc[:, ci].astype(np.int64)])
            ci += 1
        else:
            width = f.get("width", 1)
            pieces.append(enc[:, di : di + width].astype(np.float32))
            di += width
    x = np.concatenate(pieces, axis=1)
    # Experts: [E, d_i, d_i+1] per depth, the layer's activation after each.
    act = ACT[layers[0].get("activation", "relu")]
    depth, h = 0, None
    while f"layers.layer0.experts.{depth}.weight" in w:
        W, b = w[f"layers.layer0.experts.{depth}.weight"], w[f"layers.layer0.experts.{depth}.bias"]
        h = act(np.einsum("nd,edu->enu", x, W) + b[:, None, :]) if h is None else act(
            np.einsum("end,edu->enu", h, W) + b[:, None, :]
        )
        depth += 1
    experts = h.transpose(1, 0, 2)  # [N, E, u]
    E = experts.shape[1]
    # Gates: one weight [d, T*E], task t's logits in columns t*E..(t+1)*E.
    logits = x @ w["layers.layer0.gates.weight"] + w["layers.layer0.gates.bias"]
    out = []
    for t, task in enumerate(spec["tasks"]):
        z = logits[:, t * E : (t + 1) * E]
        g = np.exp(z - z.max(axis=1, keepdims=True))
        g /= g.sum(axis=1, keepdims=True)
        y = np.einsum("ne,neu->nu", g, experts)
        i = 0
        while f"tasks.{task['name']}.tower.{i}.weight" in w:
            y = y @ w[f"tasks.{task['name']}.tower.{i}.weight"] + w[f"tasks.{task['name']}.tower.{i}.bias"]
            if f"tasks.{task['name']}.tower.{i + 1}.weight" in w:
                y = ACT[task.get("activation", "relu")](y)
            i += 1
        y = y[:, 0]
        out.append(1 / (1 + np.exp(-y)) if task["kind"] == "binary" else y)
    got = np.stack(out, axis=1)
    _, expected = rows(predictions)
    diff = np.abs(got - expected).max()
    print(f"{len(got)} rows, {len(out)} tasks: max |numpy - multigate| = {diff:.3g}")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
