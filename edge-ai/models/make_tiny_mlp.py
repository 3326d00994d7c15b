#!/usr/bin/env python3
"""Generate the test models shipped with edge-ai and their expected outputs.

Writes, next to this script:
  tiny-mlp.onnx           an 8 -> 16 -> 1 MLP (Gemm, Relu, Gemm), input "x" of
                          shape [1, 8] float32, output "y" of shape [1, 1] float32;
                          also the model built into every node
  tiny-mlp.expected.json  fixed inputs and the outputs numpy computes for them

and two variants with the same weights that differ only in the declared input
shape, to test how edge-ai treats the batch dimension:
  tiny-mlp.symbolic-batch.onnx  input ["batch", 8]: loads, runs batches
  tiny-mlp.batch4.onnx          input [4, 8]: refused, edge-ai runs a batch
                                of 1 or a symbolic one

and two malformed copies that crashed tract's ONNX parser when edge-ai used it,
which edge-ai must refuse (not valid ONNX: the checker is not run):
  tiny-mlp.undefined-output.onnx       a graph output no node produces
  tiny-mlp.raw-string-initializer.onnx a string tensor stored as raw bytes

and, for the operators edge-ai supports (edge-ai/tests/ops.rs):
  ops.onnx                 input "x" [1, 6], output "y" [1, 4]: one graph using
                           every supported operator (Gemm, MatMul, Add, Sub, Mul,
                           Div, Relu, Sigmoid, Tanh, Softmax, Identity, Constant)
                           with the attributes and broadcasts edge-ai must honour
  ops.expected.json        fixed inputs and the outputs onnx's reference
                           evaluator computes for ops.onnx (numpy agrees)
  ops.opset11.onnx         input [1, 4], output [1, 3] under opset 11: Gemm
                           without C, then Softmax without an axis (default 1)
  ops.opset11.expected.json  the same for ops.opset11.onnx

and two valid models that edge-ai must refuse:
  unsupported-conv.onnx    a Conv node, an operator edge-ai does not implement
  external-data.onnx       an initializer stored in "weights.bin" next to the
                           model; the file is deliberately not written, and
                           edge-ai never reads files other than the model

and, for batches, several ports and the edge.* metadata (edge-ai/tests/batch.rs,
edge-ai/tests/metadata.rs, edge-ai/tests/alloc.rs):
  two-port.onnx            inputs "a" [batch, 3] and "b" [batch, 2], outputs
                           "u" [batch, 4] and "v" [batch, 1]; no metadata
  two-port.expected.json   batches of fixed inputs and the reference's outputs
  route-mlp.onnx           a 13 -> 16 -> 16 -> 2 routing MLP, input "candidates"
                           [batch, 13], output "score" [batch, 2], declaring
                           edge.purpose, its feature schema and 4 golden rows
  route-mlp.expected.json  batches of fixed inputs and the reference's outputs
  route-mlp.wrong-golden.onnx     the same, one golden output off by 0.5:
                                  refused at load
  route-mlp.schema-mismatch.onnx  the same, 12 features declared for the 13
                                  columns of "candidates": refused at load
  passthrough.onnx         "y" = Identity("x"), both [batch, 4]: tract runs no
                           operator, so what a run allocates is edge-ai's own

The weights come from fixed seeds, so running the script again rewrites
byte-identical files. Regenerate them all together, never by hand:

    pip install onnx==1.23.2 numpy==2.4.6
    python3 edge-ai/models/make_tiny_mlp.py

The Rust tests (edge-ai/tests/*.rs) load the .onnx files with edge-ai and check
them against the outputs in the .json files.
"""

import json
import pathlib
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

SEED = 20240611
INPUT_LEN = 8
HIDDEN_LEN = 16
OUTPUT_LEN = 1
# Opset 13 and IR version 8 are old enough for any ONNX runtime we might use.
OPSET = 13
IR_VERSION = 8

HERE = pathlib.Path(__file__).resolve().parent
MODEL_PATH = HERE / "tiny-mlp.onnx"
EXPECTED_PATH = HERE / "tiny-mlp.expected.json"

# The operator models draw from their own seeds, so adding them left the tiny MLP's
# weights and inputs, drawn from SEED, unchanged.
OPS_SEED = 20250301
OPS_INPUT_LEN = 6
OPS_HIDDEN_LEN = 8
OPS_MIXED_LEN = 6
OPS_OUTPUT_LEN = 4
OPSET11_SEED = 20250302
OPSET11_INPUT_LEN = 4
OPSET11_OUTPUT_LEN = 3


def make_weights(rng):
    # Gemm with transB=1 takes weights as [out, in], as PyTorch's Linear does.
    w1 = rng.normal(0.0, 0.5, size=(HIDDEN_LEN, INPUT_LEN)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, size=(HIDDEN_LEN,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.5, size=(OUTPUT_LEN, HIDDEN_LEN)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, size=(OUTPUT_LEN,)).astype(np.float32)
    return w1, b1, w2, b2


def make_model(w1, b1, w2, b2, batch=1):
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h_pre"], name="fc1", transB=1),
        helper.make_node("Relu", ["h_pre"], ["h"], name="relu1"),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    initializers = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, INPUT_LEN])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, OUTPUT_LEN])],
        initializer=initializers,
    )
    return finish_model(graph)


def make_malformed(model):
    """Copies of `model` that tract panics on, each broken in one way."""
    undefined_output = onnx.ModelProto()
    undefined_output.CopyFrom(model)
    undefined_output.graph.output[0].name = "never_computed"

    raw_string = onnx.ModelProto()
    raw_string.CopyFrom(model)
    tensor = raw_string.graph.initializer.add()
    tensor.name = "label"
    tensor.data_type = TensorProto.STRING
    tensor.dims.append(1)
    tensor.raw_data = b"cat"

    return {
        "tiny-mlp.undefined-output.onnx": undefined_output,
        "tiny-mlp.raw-string-initializer.onnx": raw_string,
    }


def forward(x, w1, b1, w2, b2):
    # float32 all the way, as tract computes it.
    h = np.maximum(x @ w1.T + b1, np.float32(0.0))
    return (h @ w2.T + b2).astype(np.float32)


def make_inputs(rng):
    fixed = [
        np.zeros(INPUT_LEN, dtype=np.float32),
        np.ones(INPUT_LEN, dtype=np.float32),
        -np.ones(INPUT_LEN, dtype=np.float32),
        np.linspace(-1.0, 1.0, INPUT_LEN, dtype=np.float32),
        np.array([3.0, -2.0, 0.5, 0.0, -0.25, 1.5, -4.0, 2.0], dtype=np.float32),
    ]
    drawn = [rng.uniform(-2.0, 2.0, size=INPUT_LEN).astype(np.float32) for _ in range(3)]
    return fixed + drawn


def write_tiny_mlp():
    rng = np.random.default_rng(SEED)
    w1, b1, w2, b2 = make_weights(rng)
    model = make_model(w1, b1, w2, b2)
    MODEL_PATH.write_bytes(model.SerializeToString())
    for batch, name in [("batch", "tiny-mlp.symbolic-batch.onnx"), (4, "tiny-mlp.batch4.onnx")]:
        variant = make_model(w1, b1, w2, b2, batch=batch)
        (HERE / name).write_bytes(variant.SerializeToString())
    for name, malformed in make_malformed(model).items():
        (HERE / name).write_bytes(malformed.SerializeToString())

    # The graph and the numpy function must agree, or the expected outputs test nothing.
    reference = ReferenceEvaluator(model)
    cases = []
    for x in make_inputs(rng):
        y = forward(x.reshape(1, INPUT_LEN), w1, b1, w2, b2).reshape(-1)
        (y_onnx,) = reference.run(None, {"x": x.reshape(1, INPUT_LEN)})
        np.testing.assert_allclose(y_onnx.reshape(-1), y, rtol=0, atol=1e-6)
        # float(np.float32) is exact in a float64, and json writes it so it reads back exactly.
        cases.append({"input": [float(v) for v in x], "output": [float(v) for v in y]})
    write_expected(EXPECTED_PATH, MODEL_PATH.name, SEED, INPUT_LEN, OUTPUT_LEN, cases)


def write_expected(path, model_name, seed, input_len, output_len, cases):
    expected = {
        "model": model_name,
        "generator": "make_tiny_mlp.py",
        "seed": seed,
        "input_len": input_len,
        "output_len": output_len,
        "cases": cases,
    }
    path.write_text(json.dumps(expected, indent=2) + "\n")


def finish_model(graph, opset=OPSET):
    """`graph` as a model with edge-ai's usual opset and IR version, checked by onnx."""
    model = helper.make_model(
        graph,
        producer_name="edge-ai/models/make_tiny_mlp.py",
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def make_ops_weights(rng):
    h, m, k = OPS_HIDDEN_LEN, OPS_MIXED_LEN, OPS_OUTPUT_LEN
    return {
        # Gemm with transB=1: [out, in].
        "fc1_w": rng.normal(0.0, 0.5, size=(h, OPS_INPUT_LEN)).astype(np.float32),
        "fc1_b": rng.normal(0.0, 0.1, size=(h,)).astype(np.float32),
        "add_bias": rng.normal(0.0, 0.1, size=(h,)).astype(np.float32),
        # A scalar (rank 0) initializer.
        "mul_scale": np.array(1.5, dtype=np.float32),
        # Kept away from zero, so Div does not amplify rounding.
        "div_by": rng.uniform(0.5, 2.0, size=(1, h)).astype(np.float32),
        # MatMul: [in, out].
        "mm_w": rng.normal(0.0, 0.5, size=(h, m)).astype(np.float32),
        # Gemm with transB=0: [in, out].
        "fc2_w": rng.normal(0.0, 0.5, size=(m, k)).astype(np.float32),
    }


# The value of the Constant node, subtracted from on the left so that Sub broadcasts its
# first operand.
OPS_SHIFT = np.array([[0.25]], dtype=np.float32)


def make_ops_model(weights):
    """Every supported operator at least once, with the attributes and broadcasts that matter.

    x[1,6] -> Gemm(alpha, beta, transB=1, C[8]) -> Relu -> Add [8] -> Sub(Constant [1,1] - .)
    -> Mul scalar -> Div [1,8] -> MatMul [8,6] = z; u = Sigmoid(z) + Tanh(z) * Softmax(z, axis=1)
    -> Gemm(transB=0, no C) [6,4] = g; y = Identity(g + Softmax(g)), default axis.
    """
    nodes = [
        helper.make_node(
            "Gemm",
            ["x", "fc1_w", "fc1_b"],
            ["fc1_out"],
            name="fc1",
            alpha=0.75,
            beta=1.5,
            transA=0,
            transB=1,
        ),
        helper.make_node("Relu", ["fc1_out"], ["relu_out"], name="relu"),
        helper.make_node("Add", ["relu_out", "add_bias"], ["add_out"], name="add"),
        helper.make_node(
            "Constant",
            [],
            ["shift"],
            name="shift",
            value=numpy_helper.from_array(OPS_SHIFT, "shift_value"),
        ),
        helper.make_node("Sub", ["shift", "add_out"], ["sub_out"], name="sub"),
        helper.make_node("Mul", ["sub_out", "mul_scale"], ["mul_out"], name="mul"),
        helper.make_node("Div", ["mul_out", "div_by"], ["div_out"], name="div"),
        helper.make_node("MatMul", ["div_out", "mm_w"], ["z"], name="matmul"),
        helper.make_node("Sigmoid", ["z"], ["z_sigmoid"], name="sigmoid"),
        helper.make_node("Tanh", ["z"], ["z_tanh"], name="tanh"),
        helper.make_node("Softmax", ["z"], ["z_softmax"], name="softmax_axis1", axis=1),
        helper.make_node("Mul", ["z_tanh", "z_softmax"], ["z_mixed"], name="mix_mul"),
        helper.make_node("Add", ["z_sigmoid", "z_mixed"], ["u"], name="mix_add"),
        helper.make_node("Gemm", ["u", "fc2_w"], ["g"], name="fc2"),
        helper.make_node("Softmax", ["g"], ["g_softmax"], name="softmax_default"),
        helper.make_node("Add", ["g", "g_softmax"], ["y_pre"], name="out_add"),
        helper.make_node("Identity", ["y_pre"], ["y"], name="identity"),
    ]
    graph = helper.make_graph(
        nodes,
        "ops",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, OPS_INPUT_LEN])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OPS_OUTPUT_LEN])],
        initializer=[numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    return finish_model(graph)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ops_forward(x, w):
    """make_ops_model in numpy, float32 all the way."""
    f = np.float32
    h = f(0.75) * (x @ w["fc1_w"].T) + f(1.5) * w["fc1_b"]
    h = np.maximum(h, f(0.0)) + w["add_bias"]
    h = (OPS_SHIFT - h) * w["mul_scale"] / w["div_by"]
    z = h @ w["mm_w"]
    u = 1.0 / (1.0 + np.exp(-z)) + np.tanh(z) * softmax(z, axis=1)
    g = u.astype(np.float32) @ w["fc2_w"]
    return (g + softmax(g, axis=-1)).astype(np.float32)


def make_opset11_model(w):
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
        # No axis: opset 11's default is 1, not opset 13's -1 (the same axis for [1, N]).
        helper.make_node("Softmax", ["g"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "ops_opset11",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, OPSET11_INPUT_LEN])],
        outputs=[
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OPSET11_OUTPUT_LEN])
        ],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return finish_model(graph, opset=11)


def make_row_inputs(rng, n):
    fixed = [
        np.zeros(n, dtype=np.float32),
        np.ones(n, dtype=np.float32),
        -np.ones(n, dtype=np.float32),
        np.linspace(-1.0, 1.0, n, dtype=np.float32),
        # Large enough to push Sigmoid and Tanh into saturation and Softmax towards one-hot.
        np.linspace(8.0, -6.0, n, dtype=np.float32),
    ]
    drawn = [rng.uniform(-2.0, 2.0, size=n).astype(np.float32) for _ in range(3)]
    return fixed + drawn


def reference_cases(model, inputs, forward_fn):
    """The reference evaluator's outputs for `inputs`, checked against `forward_fn` (numpy)."""
    reference = ReferenceEvaluator(model)
    cases = []
    for x in inputs:
        row = x.reshape(1, -1)
        (y_onnx,) = reference.run(None, {"x": row})
        np.testing.assert_allclose(y_onnx, forward_fn(row), rtol=1e-6, atol=1e-6)
        cases.append(
            {"input": [float(v) for v in x], "output": [float(v) for v in y_onnx.reshape(-1)]}
        )
    return cases


def make_unsupported_conv_model():
    """A valid model whose only operator edge-ai lacks is Conv, with a [1, 4] input."""
    nodes = [
        # Add broadcasts [1, 4] against [1, 1, 4] into Conv's [batch, channels, length].
        helper.make_node("Add", ["x", "zeros"], ["x3"], name="to_ncl"),
        helper.make_node("Conv", ["x3", "kernel"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported_conv",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2])],
        initializer=[
            numpy_helper.from_array(np.zeros((1, 1, 4), dtype=np.float32), "zeros"),
            numpy_helper.from_array(
                np.arange(6, dtype=np.float32).reshape(2, 1, 3) / 6, "kernel"
            ),
        ],
    )
    return finish_model(graph)


EXTERNAL_WEIGHTS = "weights.bin"


def make_external_data_model():
    """A valid model whose MatMul weights live in EXTERNAL_WEIGHTS, a file not shipped."""
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    tensor = numpy_helper.from_array(w, "w")
    raw = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in [("location", EXTERNAL_WEIGHTS), ("offset", "0"), ("length", str(len(raw)))]:
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "external_data",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[tensor],
    )
    model = helper.make_model(
        graph,
        producer_name="edge-ai/models/make_tiny_mlp.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    # The checker reads external data from the model's directory: check the model next to the
    # weights in a scratch directory, so the shipped file is valid ONNX missing only its weights.
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        (scratch / EXTERNAL_WEIGHTS).write_bytes(raw)
        (scratch / "model.onnx").write_bytes(model.SerializeToString())
        onnx.checker.check_model(str(scratch / "model.onnx"), full_check=True)
    return model


def write_ops_models():
    rng = np.random.default_rng(OPS_SEED)
    weights = make_ops_weights(rng)
    model = make_ops_model(weights)
    (HERE / "ops.onnx").write_bytes(model.SerializeToString())
    cases = reference_cases(
        model, make_row_inputs(rng, OPS_INPUT_LEN), lambda x: ops_forward(x, weights)
    )
    write_expected(
        HERE / "ops.expected.json", "ops.onnx", OPS_SEED, OPS_INPUT_LEN, OPS_OUTPUT_LEN, cases
    )

    rng = np.random.default_rng(OPSET11_SEED)
    w = rng.normal(0.0, 0.5, size=(OPSET11_OUTPUT_LEN, OPSET11_INPUT_LEN)).astype(np.float32)
    model = make_opset11_model(w)
    (HERE / "ops.opset11.onnx").write_bytes(model.SerializeToString())
    cases = reference_cases(
        model,
        make_row_inputs(rng, OPSET11_INPUT_LEN),
        lambda x: softmax(x @ w.T, axis=1).astype(np.float32),
    )
    write_expected(
        HERE / "ops.opset11.expected.json",
        "ops.opset11.onnx",
        OPSET11_SEED,
        OPSET11_INPUT_LEN,
        OPSET11_OUTPUT_LEN,
        cases,
    )

    (HERE / "unsupported-conv.onnx").write_bytes(make_unsupported_conv_model().SerializeToString())
    (HERE / "external-data.onnx").write_bytes(make_external_data_model().SerializeToString())


# The batch models draw from their own seeds too, so adding them left the others unchanged.
TWO_PORT_SEED = 20261207
ROUTE_SEED = 20261208
ROUTE_HIDDEN_LEN = 16
# Routing features a node scores each candidate on, in column order, with their units: the
# schema route-mlp.onnx declares and the caller checks with Model::expect_schema.
ROUTE_FEATURES = [
    ("peak_ewma_ms", "ms"),
    ("p99_ms", "ms"),
    ("in_flight", "requests"),
    ("queue_depth", "requests"),
    ("error_rate", "ratio"),
    ("cpu_util", "ratio"),
    ("mem_free", "MiB"),
    ("rtt_ms", "ms"),
    ("link", "Mbit/s"),
    ("battery", "ratio"),
    ("hops", "1"),
    ("same_site", "bool"),
    ("age", "s"),
]
ROUTE_OUTPUTS = [("score", "1"), ("p_fail", "ratio")]
ROUTE_GOLDEN_ROWS = 4
# Row counts of the expected batches: a full routing decision, one row, and an odd count.
BATCH_ROWS = [8, 1, 5]


def value_info(name, width):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def make_two_port_weights(rng):
    return {
        "wa": rng.normal(0.0, 0.5, size=(4, 3)).astype(np.float32),
        "wb": rng.normal(0.0, 0.5, size=(4, 2)).astype(np.float32),
        "bu": rng.normal(0.0, 0.1, size=(4,)).astype(np.float32),
        "wv": rng.normal(0.0, 0.5, size=(1, 2)).astype(np.float32),
        "bv": rng.normal(0.0, 0.1, size=(1,)).astype(np.float32),
    }


def make_two_port_model(w):
    """u = Relu(a Wa' + b Wb' + bu), v = Sigmoid(b Wv' + bv): outputs that mix the inputs."""
    nodes = [
        helper.make_node("Gemm", ["a", "wa", "bu"], ["ua"], name="fc_a", transB=1),
        helper.make_node("Gemm", ["b", "wb"], ["ub"], name="fc_b", transB=1),
        helper.make_node("Add", ["ua", "ub"], ["u_pre"], name="mix"),
        helper.make_node("Relu", ["u_pre"], ["u"], name="relu"),
        helper.make_node("Gemm", ["b", "wv", "bv"], ["v_pre"], name="fc_v", transB=1),
        helper.make_node("Sigmoid", ["v_pre"], ["v"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_port",
        inputs=[value_info("a", 3), value_info("b", 2)],
        outputs=[value_info("u", 4), value_info("v", 1)],
        initializer=[numpy_helper.from_array(v, name) for name, v in w.items()],
    )
    return finish_model(graph)


def two_port_forward(inputs, w):
    f = np.float32
    a, b = inputs["a"], inputs["b"]
    u = np.maximum(a @ w["wa"].T + w["bu"] + b @ w["wb"].T, f(0.0))
    v = f(1.0) / (f(1.0) + np.exp(-(b @ w["wv"].T + w["bv"])))
    return {"u": u.astype(np.float32), "v": v.astype(np.float32)}


def make_route_weights(rng):
    n, h = len(ROUTE_FEATURES), ROUTE_HIDDEN_LEN
    return {
        "w1": rng.normal(0.0, 0.4, size=(h, n)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, size=(h,)).astype(np.float32),
        "w2": rng.normal(0.0, 0.4, size=(h, h)).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, size=(h,)).astype(np.float32),
        "w3": rng.normal(0.0, 0.4, size=(len(ROUTE_OUTPUTS), h)).astype(np.float32),
        "b3": rng.normal(0.0, 0.1, size=(len(ROUTE_OUTPUTS),)).astype(np.float32),
    }


def make_route_model(w):
    nodes = [
        helper.make_node("Gemm", ["candidates", "w1", "b1"], ["h1_pre"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1_pre"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2_pre"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2_pre"], ["h2"], name="relu2"),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["score"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "route_mlp",
        inputs=[value_info("candidates", len(ROUTE_FEATURES))],
        outputs=[value_info("score", len(ROUTE_OUTPUTS))],
        initializer=[numpy_helper.from_array(v, name) for name, v in w.items()],
    )
    return finish_model(graph)


def route_forward(inputs, w):
    f = np.float32
    h = np.maximum(inputs["candidates"] @ w["w1"].T + w["b1"], f(0.0))
    h = np.maximum(h @ w["w2"].T + w["b2"], f(0.0))
    return {"score": (h @ w["w3"].T + w["b3"]).astype(np.float32)}


def decimal_rows(rows):
    """Rows as edge.golden.* text; float(np.float32) prints so that it parses back exactly."""
    return ";".join(",".join(repr(float(v)) for v in row) for row in rows)


def features_text(features):
    return ",".join(f"{name}:{unit}" for name, unit in features)


def with_metadata(model, entries):
    """A copy of `model` with `entries` (key, value) as its metadata_props, in order."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.helper.set_model_props(copy, dict(entries))
    onnx.checker.check_model(copy, full_check=True)
    return copy


def draw_batches(rng, widths):
    """One dict of input name -> [rows, width] float32 per row count of BATCH_ROWS."""
    return [
        {
            name: rng.uniform(-2.0, 2.0, size=(rows, width)).astype(np.float32)
            for name, width in widths.items()
        }
        for rows in BATCH_ROWS
    ]


def batch_cases(model, batches, forward_fn):
    """The reference evaluator's outputs for each batch, checked against numpy."""
    reference = ReferenceEvaluator(model)
    names = [output.name for output in model.graph.output]
    cases = []
    for inputs in batches:
        got = dict(zip(names, reference.run(None, inputs)))
        want = forward_fn(inputs)
        for name in names:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
        cases.append(
            {
                "rows": int(next(iter(inputs.values())).shape[0]),
                "inputs": {name: v.tolist() for name, v in inputs.items()},
                "outputs": {name: v.astype(np.float32).tolist() for name, v in got.items()},
            }
        )
    return cases


def write_batch_expected(path, model_name, seed, model, cases):
    def ports(values):
        return [
            {"name": v.name, "width": v.type.tensor_type.shape.dim[1].dim_value} for v in values
        ]

    expected = {
        "model": model_name,
        "generator": "make_tiny_mlp.py",
        "seed": seed,
        "inputs": ports(model.graph.input),
        "outputs": ports(model.graph.output),
        "batches": cases,
    }
    path.write_text(json.dumps(expected, indent=2) + "\n")


def write_batch_models():
    rng = np.random.default_rng(TWO_PORT_SEED)
    w = make_two_port_weights(rng)
    model = make_two_port_model(w)
    (HERE / "two-port.onnx").write_bytes(model.SerializeToString())
    batches = draw_batches(rng, {"a": 3, "b": 2})
    cases = batch_cases(model, batches, lambda inputs: two_port_forward(inputs, w))
    write_batch_expected(
        HERE / "two-port.expected.json", "two-port.onnx", TWO_PORT_SEED, model, cases
    )

    rng = np.random.default_rng(ROUTE_SEED)
    w = make_route_weights(rng)
    bare = make_route_model(w)
    golden_in = rng.uniform(-2.0, 2.0, size=(ROUTE_GOLDEN_ROWS, len(ROUTE_FEATURES)))
    golden_in = golden_in.astype(np.float32)
    golden_out = route_forward({"candidates": golden_in}, w)["score"]
    (reference_out,) = ReferenceEvaluator(bare).run(None, {"candidates": golden_in})
    np.testing.assert_allclose(reference_out, golden_out, rtol=1e-6, atol=1e-6)

    def metadata(features, outputs):
        return [
            ("edge.purpose", "route"),
            ("edge.input.candidates", features_text(features)),
            ("edge.output.score", features_text(ROUTE_OUTPUTS)),
            ("edge.golden.input.candidates", decimal_rows(golden_in)),
            ("edge.golden.output.score", decimal_rows(outputs)),
        ]

    model = with_metadata(bare, metadata(ROUTE_FEATURES, golden_out))
    (HERE / "route-mlp.onnx").write_bytes(model.SerializeToString())
    batches = draw_batches(rng, {"candidates": len(ROUTE_FEATURES)})
    cases = batch_cases(model, batches, lambda inputs: route_forward(inputs, w))
    write_batch_expected(
        HERE / "route-mlp.expected.json", "route-mlp.onnx", ROUTE_SEED, model, cases
    )

    wrong = golden_out.copy()
    wrong[2, 1] += np.float32(0.5)
    variant = with_metadata(bare, metadata(ROUTE_FEATURES, wrong))
    (HERE / "route-mlp.wrong-golden.onnx").write_bytes(variant.SerializeToString())
    variant = with_metadata(bare, metadata(ROUTE_FEATURES[:-1], golden_out))
    (HERE / "route-mlp.schema-mismatch.onnx").write_bytes(variant.SerializeToString())

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")],
        "passthrough",
        inputs=[value_info("x", 4)],
        outputs=[value_info("y", 4)],
    )
    (HERE / "passthrough.onnx").write_bytes(finish_model(graph).SerializeToString())


def main():
    write_tiny_mlp()
    write_ops_models()
    write_batch_models()
    for pattern in [
        "tiny-mlp*",
        "ops*",
        "unsupported-*",
        "external-data*",
        "two-port*",
        "route-mlp*",
        "passthrough*",
    ]:
        for path in sorted(HERE.glob(pattern)):
            print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
