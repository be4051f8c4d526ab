#!/usr/bin/env python3
"""Checks an exported ONNX model against multigate's own predictions.

    python3 scripts/onnx_check.py MODEL.onnx ENCODED.csv PREDICTIONS.csv [--tolerance 1e-5]

ENCODED.csv is `multigate encode BUNDLE DATA` (categorical table rows, then dense
values, then bag slot weights, as the graph takes them); PREDICTIONS.csv is `multigate predict BUNDLE DATA`
(one column per task output). Validates the model with onnx.checker, runs it with
onnxruntime, and compares every output column with multigate's to the tolerance
(absolute). Prints the largest difference; exits 1 when it is over the tolerance.
"""
import argparse
import csv
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("encoded")
    ap.add_argument("predictions")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    args = ap.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    json.loads(meta["multigate.encoding"])  # present and valid JSON

    header, rows = read_csv(args.encoded)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    # The encoded columns are the graph's inputs side by side, in the graph's order
    # (categorical, dense, bag_weights), each as wide as the input declares.
    feeds = {}
    start = 0
    for i in session.get_inputs():
        width = i.shape[1]
        kind = np.int64 if i.name == "categorical" else np.float32
        feeds[i.name] = np.array([[float(v) for v in r[start : start + width]] for r in rows]).astype(kind)
        start += width
    if start != len(header):
        print(f"the encoded file has {len(header)} columns, the graph's inputs {start}")
        return 1
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, feeds)

    pred_header, pred_rows = read_csv(args.predictions)
    expected = np.array([[float(v) for v in r] for r in pred_rows], dtype=np.float64)
    got_columns = []
    for name, out in zip(names, outputs):
        out = np.asarray(out, dtype=np.float64)
        got_columns.extend([out] if out.ndim == 1 else [out[:, k] for k in range(out.shape[1])])
    got = np.stack(got_columns, axis=1)
    if got.shape != expected.shape:
        print(f"shape mismatch: onnxruntime {got.shape}, multigate {expected.shape} ({pred_header})")
        return 1
    diff = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    print(
        f"{args.model}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes, "
        f"{len(rows)} rows, outputs {names}: max |onnxruntime - multigate| = {diff.max():.3g} "
        f"(row {worst[0] + 1}, column {pred_header[worst[1]]})"
    )
    return 0 if diff.max() <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
