#!/usr/bin/env python3
"""Generate the tiny test model shipped with edge-ai and its expected outputs.

Writes, next to this script:
  tiny-mlp.onnx           an 8 -> 16 -> 1 MLP (Gemm, Relu, Gemm), input "x" of
                          shape [1, 8] float32, output "y" of shape [1, 1] float32
  tiny-mlp.expected.json  fixed inputs and the outputs numpy computes for them

and two variants with the same weights that differ only in the declared input
shape, to test how edge-ai treats the batch dimension:
  tiny-mlp.symbolic-batch.onnx  input ["batch", 8]: loads, batch fixed to 1
  tiny-mlp.batch4.onnx          input [4, 8]: refused, edge-ai runs one row

and two malformed copies on which tract's ONNX parser panics, so edge-ai must
refuse them before tract sees them (not valid ONNX: the checker is not run):
  tiny-mlp.undefined-output.onnx       a graph output no node produces
  tiny-mlp.raw-string-initializer.onnx a string tensor stored as raw bytes

The weights come from a fixed seed, so running the script again rewrites
byte-identical files. Regenerate them all together, never by hand:

    pip install onnx numpy
    python3 edge-ai/models/make_tiny_mlp.py

The Rust tests (edge-ai/tests/tiny_mlp.rs) load the .onnx with tract and check
it against the numpy outputs in the .json.
"""

import json
import pathlib

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
    model = helper.make_model(
        graph,
        producer_name="edge-ai/models/make_tiny_mlp.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


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


def main():
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
    expected = {
        "model": MODEL_PATH.name,
        "generator": "make_tiny_mlp.py",
        "seed": SEED,
        "input_len": INPUT_LEN,
        "output_len": OUTPUT_LEN,
        "cases": cases,
    }
    EXPECTED_PATH.write_text(json.dumps(expected, indent=2) + "\n")
    for path in sorted(HERE.glob("tiny-mlp*")):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
