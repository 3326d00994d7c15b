#!/usr/bin/env python3
"""Train the placement model from placement attempt rows and write it as ONNX.

    place.py DATA.csv OUT.onnx

DATA.csv is the CSV that `edge-sim place record` writes (see edge-ai/sim/src/place/mod.rs):
the 15 placement features of the chosen node in PLACE_FEATURES order, then startup_ms,
refused and restarted.

The model maps one (node, instance) pair's features to [ln(startup in ms), failure
probability], failure being a refused admission or a crash soon after starting:
  x [batch, 15] -> expand -> MLP (Gemm, Relu, Gemm, Relu, Gemm) -> y [batch, 2]
The startup is fitted on the rows that started (a refusal has none). The expansion is part
of the graph and uses only operators edge-ai's reader supports (MatMul, Relu, Add, Mul,
Div): each feature standardised, and the counts and the size also as v / (v + c) for a
ladder of scales c. Column 1 of y is a Sigmoid.

Everything is seeded and numpy runs single-threaded (train.sh sets it): the same data gives
the same file, byte for byte. OUT.onnx gets a sibling OUT.golden.json with a few inputs and
the outputs numpy computes for them, which the Rust test runs through edge-ai.
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

# As orchestrator-core's PLACE_FEATURES and PLACE_OUTPUTS declare them (name, unit), in
# order.
FEATURES = [
    ("free_cpu_after", "ratio"),
    ("free_memory_after", "ratio"),
    ("cpus", "cores"),
    ("load_cpu", "ratio"),
    ("load_memory", "ratio"),
    ("load_known", "bool"),
    ("near", "bool"),
    ("proximity", "ratio"),
    ("cached", "bool"),
    ("restarts", "count"),
    ("refusals", "count"),
    ("artifact_mb", "MB"),
    ("fetch_mbps", "Mbit/s"),
    ("start_ms", "ms"),
    ("cache_rank", "count"),
]
OUTPUTS = [("ln_startup_ms", "ln(ms)"), ("failure", "probability")]
WIDTH = len(FEATURES)
COLUMNS = [name for name, _ in FEATURES] + ["startup_ms", "refused", "restarted"]

# Saturating columns: feature index -> scales c of v / (v + c).
COUNT_SCALES = [1.0, 2.0, 4.0, 8.0]
SATURATE = {
    2: [2.0, 4.0, 8.0, 16.0],
    9: COUNT_SCALES,
    10: COUNT_SCALES,
    11: [5.0, 20.0, 50.0, 100.0],
    12: [2.0, 5.0, 20.0, 50.0, 200.0],
    13: [200.0, 500.0, 1000.0, 3000.0],
    14: COUNT_SCALES,
}

# Features the model does not read.
IGNORED = set()

# Features read only through their saturating columns, never linearly: unbounded counts and
# sizes, which a linear column would let run far past anything seen in training (a node
# with 40 restarts would get a startup of e^-100 ms).
BOUNDED_ONLY = set(SATURATE)

HIDDEN = 32
MAX_ROWS = 1_000_000
EPOCHS = 12
BATCH = 512
LEARNING_RATE = 2e-3
# Startups are clipped to this floor before the logarithm.
MIN_LATENCY_MS = 1.0
# The graph holds ln(startup) to [0, MAX_LN_STARTUP] (1 ms to 20 minutes), whatever a row
# far from the training data makes of it.
MAX_LN_STARTUP = 14.0


def load(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    expected = COLUMNS
    if header != expected:
        sys.exit(f"{path}: header {header} is not {expected}")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape[1] != len(expected):
        sys.exit(f"{path}: {data.shape[1]} columns, not {len(expected)}")
    if not np.all(np.isfinite(data)):
        sys.exit(f"{path}: values that are not numbers")
    return data


def expansion(x):
    """The expansion's constants, from the training inputs: E [13, K], C, A, B, M [K]."""
    columns = []  # (feature, kind, scale)
    for i in range(WIDTH):
        if i in IGNORED:
            continue
        if i not in BOUNDED_ONLY:
            columns.append((i, "linear", 0.0))
        for c in SATURATE.get(i, []):
            columns.append((i, "saturate", c))
    k = len(columns)
    e = np.zeros((WIDTH, k), np.float32)
    c = np.ones(k, np.float32)
    a = np.zeros(k, np.float32)
    b = np.zeros(k, np.float32)
    m = np.zeros(k, np.float32)
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-3)
    for j, (i, kind, scale) in enumerate(columns):
        e[i, j] = 1.0
        if kind == "linear":
            a[j] = 1.0 / std[i]
            b[j] = -mean[i] / std[i]
        else:
            c[j] = scale
            m[j] = 1.0
    return e, c, a, b, m


def expand(x, consts):
    """What the graph computes before the MLP, in float32, operator by operator."""
    e, c, a, b, m = consts
    xe = x.astype(np.float32) @ e
    r = np.maximum(xe, np.float32(0))
    s = r / (r + c)
    return s * m + (xe * a + b)


def sigmoid(v):
    with np.errstate(over="ignore"):
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


def train(z, y_lat, y_fail, started, rng):
    k = z.shape[1]
    params = [init(rng, k, HIDDEN), init(rng, HIDDEN, HIDDEN), init(rng, HIDDEN, 2)]
    # Start the startup output at the data's mean, the failure one at its rate.
    params[2][1][0] = np.float32(y_lat[started > 0].mean())
    rate = float(np.clip(y_fail.mean(), 1e-4, 1 - 1e-4))
    params[2][1][1] = np.float32(np.log(rate / (1 - rate)))
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
            zb, tl, tf, ts = z[idx], y_lat[idx], y_fail[idx], started[idx]
            h1p, h1, h2p, h2, o = forward(params, zb)
            nb = len(idx)
            # Loss: mean squared error of ln(startup) on the rows that started, plus the
            # binary cross-entropy of failure on every row.
            d_lat = (o[:, 0] - tl) * ts
            p = sigmoid(o[:, 1])
            total += float((d_lat**2).sum())
            go = np.empty_like(o)
            go[:, 0] = 2.0 * d_lat / nb
            go[:, 1] = (p - tf) / nb
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
        rmse = np.sqrt(total / max(started.sum(), 1))
        print(f"  epoch {epoch + 1}/{EPOCHS}: ln-startup rmse {rmse:.4f}", flush=True)
    return params


def predict(params, consts, x):
    o = forward(params, expand(x, consts))[4]
    held = np.maximum(o[:, 0], 0) - np.maximum(o[:, 0] - MAX_LN_STARTUP, 0)
    return np.stack([held, sigmoid(o[:, 1])], axis=1).astype(np.float32)


def graph(params, consts):
    e, c, a, b, m = consts
    (w1, b1), (w2, b2), (w3, b3) = params
    tensors = {
        "expand": e, "scale": c, "lin_mul": a, "lin_add": b, "sat_mask": m,
        "w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3,
        "startup_mask": np.array([1, 0], np.float32),
        "startup_cap": np.array([MAX_LN_STARTUP, 0], np.float32),
        "failure_mask": np.array([0, 1], np.float32),
    }
    node = helper.make_node
    nodes = [
        # No node shares a name with an initializer: tract-onnx, which checks every pushed
        # model, refuses a graph where one does.
        node("MatMul", ["x", "expand"], ["xe"], name="lift_x"),
        node("Relu", ["xe"], ["xr"], name="positive"),
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
        node("Sigmoid", ["o"], ["os"], name="sigmoid"),
        node("Mul", ["o", "startup_mask"], ["ol0"], name="startup_column"),
        # Held to [0, MAX_LN_STARTUP]: relu(v) - relu(v - cap).
        node("Relu", ["ol0"], ["ol1"], name="startup_floor"),
        node("Sub", ["ol0", "startup_cap"], ["ol2"], name="startup_over"),
        node("Relu", ["ol2"], ["ol3"], name="startup_excess"),
        node("Sub", ["ol1", "ol3"], ["ol"], name="startup_held"),
        node("Mul", ["os", "failure_mask"], ["of"], name="failure_column"),
        node("Add", ["ol", "of"], ["y"], name="outputs"),
    ]
    g = helper.make_graph(
        nodes,
        "place",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(t, name) for name, t in tensors.items()],
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-ai/train/place.py",
    )
    model.ir_version = IR_VERSION
    return model


def rows(values):
    return ";".join(",".join(repr(float(np.float32(v))) for v in row) for row in values)


def golden_inputs(x):
    """A few rows from the data: empty, full, busy, cached, restarts, refusals."""
    picks = [
        # An empty 4-core node, nothing known of it.
        np.array([1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]),
        x[np.argmax(x[:, 0])],
        x[np.argmin(x[:, 0])],
        x[np.argmax(x[:, 3])],
        x[np.argmax(x[:, 8])],
        x[np.argmax(x[:, 9])],
        x[np.argmax(x[:, 10])],
    ]
    return np.array(picks, dtype=np.float32)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: place.py DATA.csv OUT.onnx")
    data_path, out_path = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rng = np.random.default_rng(SEED)
    data = load(data_path)
    print(f"{len(data)} rows from {data_path}", flush=True)
    if len(data) > MAX_ROWS:
        data = data[np.sort(rng.choice(len(data), MAX_ROWS, replace=False))]
    x = data[:, :WIDTH].astype(np.float32)
    y_lat = np.log(np.maximum(data[:, WIDTH], MIN_LATENCY_MS)).astype(np.float32)
    refused = data[:, WIDTH + 1]
    started = (refused == 0).astype(np.float32)
    y_fail = np.maximum(refused, data[:, WIDTH + 2]).astype(np.float32)
    consts = expansion(x)
    z = expand(x, consts).astype(np.float32)
    print(f"training on {len(x)} rows, {z.shape[1]} expanded features", flush=True)
    params = train(z, y_lat, y_fail, started, rng)

    out = predict(params, consts, x)
    err = np.abs(out[:, 0] - y_lat)[started > 0]
    print(f"ln-startup mean abs error {err.mean():.4f} (x{np.exp(err.mean()):.2f})")
    print(f"failure: mean predicted {out[:, 1].mean():.4f}, observed {y_fail.mean():.4f}")

    model = graph(params, consts)
    golden_x = golden_inputs(x)
    golden_y = predict(params, consts, golden_x)
    meta = {
        "edge.purpose": "place",
        "edge.input.x": ",".join(f"{n}:{u}" for n, u in FEATURES),
        "edge.output.y": ",".join(f"{n}:{u}" for n, u in OUTPUTS),
        "edge.golden.input.x": rows(golden_x),
        "edge.golden.output.y": rows(golden_y),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)

    # The graph must compute what numpy does.
    from onnx.reference import ReferenceEvaluator

    reference = ReferenceEvaluator(model).run(None, {"x": golden_x})[0]
    if not np.allclose(reference, golden_y, rtol=1e-4, atol=1e-5):
        sys.exit(f"the ONNX graph disagrees with numpy:\n{reference}\n{golden_y}")

    out_path.write_bytes(model.SerializeToString())
    golden = {
        "model": out_path.name,
        "generator": "edge-ai/train/place.py",
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
