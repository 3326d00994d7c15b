#!/usr/bin/env python3
"""Train the pre-warming model from decision rows and write it as ONNX.

    warm.py DATA.csv OUT.onnx

DATA.csv is what `edge-sim warm record` writes (see edge-ai/sim/src/warm/mod.rs): the 17
warm features of one workload at a decision point, in WARM_FEATURES order, then
request_within_horizon (1 when a request came within the next minute, else 0).

The model maps those features to the probability of a request within the horizon:
  x [batch, 17] -> expand -> MLP (Gemm, Relu, Gemm, Relu, Gemm) -> Sigmoid -> y [batch, 1]
The expansion is part of the graph and uses only operators the node's reader supports
(MatMul, Add, Relu, Div, Mul): each feature standardised; each time and count also as
v / (v + c) for a ladder of scales c (a saturating stand-in for the logarithm the reader
lacks); and the time until a request is due by the workload's rhythm (the mean and the last
gap less the time since the last request), either way, as r / (r + c) with
r = relu(+-due - shift) for a ladder of shifts: sharp around the moment a periodic caller
is due, flat far from it.

Everything is seeded and numpy runs single-threaded (train-warm.sh sets it): the same data
gives the same file, byte for byte. OUT.onnx gets a sibling OUT.golden.json with a few inputs
and the outputs numpy computes for them, which the Rust test runs through edge-ai.
"""

import json
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261207
OPSET = 13
IR_VERSION = 8

# As node-core's WARM_FEATURES and WARM_OUTPUTS declare them (name, unit), in order.
FEATURES = [
    ("since_request_s", "s"),
    ("gap_last_s", "s"),
    ("gap_mean_s", "s"),
    ("gap_std_s", "s"),
    ("since_over_gap", "ratio"),
    ("requests_1m", "requests"),
    ("requests_10m", "requests"),
    ("requests_1h", "requests"),
    ("requests_24h", "requests"),
    ("day_ago_next_10m", "requests"),
    ("day_ago_next_60m", "requests"),
    ("day_sin", "ratio"),
    ("day_cos", "ratio"),
    ("cold_start_s", "s"),
    ("memory_mib", "MiB"),
    ("idle_secs", "s"),
    ("day_ago_due_s", "s"),
]
OUTPUTS = [("request_within_horizon", "probability")]
WIDTH = len(FEATURES)
COL = {name: i for i, (name, _) in enumerate(FEATURES)}

TIME_SCALES = [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 86400.0]
COUNT_SCALES = [1.0, 3.0, 10.0, 30.0, 100.0]
SATURATE = {
    COL["since_request_s"]: TIME_SCALES,
    COL["gap_last_s"]: TIME_SCALES,
    COL["gap_mean_s"]: TIME_SCALES,
    COL["gap_std_s"]: TIME_SCALES,
    COL["since_over_gap"]: [0.5, 1.0, 2.0, 4.0, 10.0],
    COL["requests_1m"]: COUNT_SCALES,
    COL["requests_10m"]: COUNT_SCALES,
    COL["requests_1h"]: COUNT_SCALES,
    COL["requests_24h"]: COUNT_SCALES,
    COL["day_ago_next_10m"]: COUNT_SCALES,
    COL["day_ago_next_60m"]: COUNT_SCALES,
    COL["cold_start_s"]: [5.0, 20.0],
    COL["idle_secs"]: [60.0, 300.0],
    COL["day_ago_due_s"]: [60.0, 120.0, 300.0, 900.0, 3600.0],
}
# Due-time hinges: seconds until due (gap - since), and its negation, shifted.
DUE_SHIFTS = [-600.0, -120.0, -60.0, -30.0, -10.0, 0.0, 10.0, 30.0, 60.0, 120.0, 600.0]
DUE_SCALE = 60.0

HIDDEN = 32
MAX_ROWS = 2_000_000
EPOCHS = 10
BATCH = 1024
LEARNING_RATE = 2e-3


def load(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    expected = [name for name, _ in FEATURES] + [OUTPUTS[0][0]]
    if header != expected:
        sys.exit(f"{path}: header {header} is not {expected}")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape[1] != len(expected):
        sys.exit(f"{path}: {data.shape[1]} columns, not {len(expected)}")
    if not np.all(np.isfinite(data)):
        sys.exit(f"{path}: values that are not numbers")
    return data


def expansion(x):
    """The expansion's constants: E [17, K], SHIFT, C, A, B, M [K]."""
    columns = []  # (coefficients over the features, kind, shift, scale)
    for i in range(WIDTH):
        unit = np.zeros(WIDTH)
        unit[i] = 1.0
        columns.append((unit, "linear", 0.0, 1.0))
        for c in SATURATE.get(i, []):
            columns.append((unit, "saturate", 0.0, c))
    since = COL["since_request_s"]
    for gap in (COL["gap_mean_s"], COL["gap_last_s"]):
        due = np.zeros(WIDTH)
        due[gap], due[since] = 1.0, -1.0
        for sign in (1.0, -1.0):
            for shift in DUE_SHIFTS:
                columns.append((sign * due, "saturate", -shift, DUE_SCALE))
    k = len(columns)
    e = np.zeros((WIDTH, k), np.float32)
    shift = np.zeros(k, np.float32)
    c = np.ones(k, np.float32)
    a = np.zeros(k, np.float32)
    b = np.zeros(k, np.float32)
    m = np.zeros(k, np.float32)
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-3)
    for j, (coef, kind, sh, scale) in enumerate(columns):
        e[:, j] = coef
        if kind == "linear":
            i = int(np.argmax(coef))
            a[j] = 1.0 / std[i]
            b[j] = -mean[i] / std[i]
        else:
            shift[j] = sh
            c[j] = scale
            m[j] = 1.0
    return e, shift, c, a, b, m


def expand(x, consts):
    """What the graph computes before the MLP, in float32, operator by operator."""
    e, shift, c, a, b, m = consts
    xe = x.astype(np.float32) @ e
    r = np.maximum(xe + shift, np.float32(0))
    s = r / (r + c)
    return s * m + (xe * a + b)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def init(rng, n_in, n_out):
    w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
    return w, np.zeros(n_out, np.float32)


def forward(params, z):
    (w1, b1), (w2, b2), (w3, b3) = params
    h1p = z @ w1.T + b1
    h1 = np.maximum(h1p, 0)
    h2p = h1 @ w2.T + b2
    h2 = np.maximum(h2p, 0)
    o = h2 @ w3.T + b3
    return h1p, h1, h2p, h2, o


def train(z, y, rng):
    k = z.shape[1]
    params = [init(rng, k, HIDDEN), init(rng, HIDDEN, HIDDEN), init(rng, HIDDEN, 1)]
    rate = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    params[2][1][0] = np.float32(np.log(rate / (1 - rate)))
    flat = [p for layer in params for p in layer]
    m = [np.zeros_like(p) for p in flat]
    v = [np.zeros_like(p) for p in flat]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = z.shape[0]
    for epoch in range(EPOCHS):
        lr = LEARNING_RATE * (0.5 ** (epoch // 4))
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            zb, tb = z[idx], y[idx]
            h1p, h1, h2p, h2, o = forward(params, zb)
            nb = len(idx)
            p = sigmoid(o[:, 0])
            pc = np.clip(p, 1e-7, 1 - 1e-7)
            total += float(-(tb * np.log(pc) + (1 - tb) * np.log(1 - pc)).sum())
            go = ((p - tb) / nb).reshape(-1, 1).astype(np.float32)
            (w1, b1), (w2, b2), (w3, b3) = params
            gw3 = go.T @ h2
            gb3 = go.sum(axis=0)
            gh2 = (go @ w3) * (h2p > 0)
            gw2 = gh2.T @ h1
            gb2 = gh2.sum(axis=0)
            gh1 = (gh2 @ w2) * (h1p > 0)
            gw1 = gh1.T @ zb
            gb1 = gh1.sum(axis=0)
            grads = [gw1, gb1, gw2, gb2, gw3, gb3]
            step += 1
            for i, (param, grad) in enumerate(zip(flat, grads)):
                grad = grad.astype(np.float32)
                m[i] = beta1 * m[i] + (1 - beta1) * grad
                v[i] = beta2 * v[i] + (1 - beta2) * grad * grad
                m_hat = m[i] / (1 - beta1**step)
                v_hat = v[i] / (1 - beta2**step)
                param -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        print(f"  epoch {epoch + 1}/{EPOCHS}: log loss {total / n:.4f}", flush=True)
    return params


def predict(params, consts, x):
    o = forward(params, expand(x, consts))[4]
    return sigmoid(o).astype(np.float32)


def graph(params, consts):
    e, shift, c, a, b, m = consts
    (w1, b1), (w2, b2), (w3, b3) = params
    tensors = {
        "expand": e, "shift": shift, "scale": c, "lin_mul": a, "lin_add": b, "sat_mask": m,
        "w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3,
    }
    node = helper.make_node
    nodes = [
        # No node shares a name with an initializer (tract-onnx refuses such a graph).
        node("MatMul", ["x", "expand"], ["xe"], name="lift_x"),
        node("Add", ["xe", "shift"], ["xh"], name="shifted"),
        node("Relu", ["xh"], ["xr"], name="positive"),
        node("Add", ["xr", "scale"], ["xd"], name="plus_scale"),
        node("Div", ["xr", "xd"], ["xs"], name="saturate"),
        node("Mul", ["xs", "sat_mask"], ["xsm"], name="saturated_only"),
        node("Mul", ["xe", "lin_mul"], ["xl0"], name="standardise_scale"),
        node("Add", ["xl0", "lin_add"], ["xl"], name="standardise_shift"),
        node("Add", ["xsm", "xl"], ["z"], name="features"),
        node("Gemm", ["z", "w1", "b1"], ["h1p"], name="fc1", transB=1),
        node("Relu", ["h1p"], ["h1"], name="relu1"),
        node("Gemm", ["h1", "w2", "b2"], ["h2p"], name="fc2", transB=1),
        node("Relu", ["h2p"], ["h2"], name="relu2"),
        node("Gemm", ["h2", "w3", "b3"], ["o"], name="fc3", transB=1),
        node("Sigmoid", ["o"], ["y"], name="probability"),
    ]
    g = helper.make_graph(
        nodes,
        "warm",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(t, name) for name, t in tensors.items()],
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-ai/train/warm.py",
    )
    model.ir_version = IR_VERSION
    return model


def rows(values):
    return ";".join(",".join(repr(float(np.float32(v))) for v in row) for row in values)


def golden_inputs(x, y):
    """A few rows from the data: quiet, busy, due, long silent, a hit and a miss."""
    picks = [
        np.zeros(WIDTH),
        x[np.argmax(x[:, COL["requests_1h"]])],
        x[np.argmin(np.abs(x[:, COL["since_over_gap"]] - 1.0))],
        x[np.argmax(x[:, COL["since_request_s"]])],
        x[np.argmax(y)],
        x[np.argmin(y)],
    ]
    return np.array(picks, dtype=np.float32)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: warm.py DATA.csv OUT.onnx")
    data_path, out_path = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rng = np.random.default_rng(SEED)
    data = load(data_path)
    print(f"{len(data)} rows from {data_path}", flush=True)
    if len(data) > MAX_ROWS:
        data = data[np.sort(rng.choice(len(data), MAX_ROWS, replace=False))]
    x = data[:, :WIDTH].astype(np.float32)
    y = data[:, WIDTH].astype(np.float32)
    consts = expansion(x)
    z = expand(x, consts).astype(np.float32)
    print(f"training on {len(x)} rows ({y.mean():.3f} with a request), "
          f"{z.shape[1]} expanded features", flush=True)
    params = train(z, y, rng)

    p = predict(params, consts, x)[:, 0]
    base = float(y.mean())
    brier = float(((p - y) ** 2).mean())
    print(f"Brier score {brier:.4f}; a constant guess {base * (1 - base):.4f}")

    model = graph(params, consts)
    golden_x = golden_inputs(x, y)
    golden_y = predict(params, consts, golden_x)
    meta = {
        "edge.purpose": "warm",
        "edge.input.x": ",".join(f"{n}:{u}" for n, u in FEATURES),
        "edge.output.y": ",".join(f"{n}:{u}" for n, u in OUTPUTS),
        "edge.golden.input.x": rows(golden_x),
        "edge.golden.output.y": rows(golden_y),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)

    from onnx.reference import ReferenceEvaluator

    reference = ReferenceEvaluator(model).run(None, {"x": golden_x})[0]
    if not np.allclose(reference, golden_y, rtol=1e-4, atol=1e-5):
        sys.exit(f"the ONNX graph disagrees with numpy:\n{reference}\n{golden_y}")

    out_path.write_bytes(model.SerializeToString())
    golden = {
        "model": out_path.name,
        "generator": "edge-ai/train/warm.py",
        "seed": SEED,
        "features": [n for n, _ in FEATURES],
        "outputs": [n for n, _ in OUTPUTS],
        "cases": [
            {"input": [float(v) for v in xi], "output": [float(v) for v in yi]}
            for xi, yi in zip(golden_x, golden_y)
        ],
    }
    golden_path = out_path.with_suffix(".golden.json")
    golden_path.write_text(json.dumps(golden, indent=2) + "\n")
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes) and {golden_path}")


if __name__ == "__main__":
    main()
