#!/usr/bin/env python3
"""Write the small operator-format (QLinearConv …) test model and its references.

    PY=$(bash tools/setup_venv.sh); $PY tools/make_qoperator_fixture.py

A tiny CNN with fixed random weights (conv 3×3 + Relu, depthwise 3×3 + Relu, pointwise conv,
residual Add, global average pool, Flatten, Gemm), quantized by ONNX Runtime's quantize_static
twice with the same calibration data: once in the operator format (QLinearConv, com.microsoft
QLinearAdd / QLinearGlobalAveragePool / QGemm) and once as QDQ. Also four inputs and ONNX
Runtime's outputs for the operator-format file on its exact u8s8 path
(session.x64quantprecision). A second model ends in MatMul + bias Add (QLinearMatMul and a
QLinearAdd with a constant). Writes assets/fixtures/tiny.{qoperator,qdq}.onnx,
tiny_matmul.qoperator.onnx, tiny.inputs.npy and {tiny,tiny_matmul}.qoperator.ort_exact.npy.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "fixtures")
rng = np.random.default_rng(20261127)


def init(name, shape, scale):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def fp32_matmul_model():
    """conv 3×3 + Relu, global average pool, Flatten, MatMul + bias Add: the classifier head of
    many converted models (QLinearMatMul and a QLinearAdd with a constant in operator format)."""
    inits = [init("w1", (8, 3, 3, 3), 0.4), init("b1", (8,), 0.1), init("wm", (8, 5), 0.5), init("bm", (5,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "wm"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "bm"], ["logits"], name="fc_bias"),
    ]
    g = helper.make_graph(nodes, "tiny_matmul", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def fp32_model():
    inits = [
        init("w1", (8, 3, 3, 3), 0.4), init("b1", (8,), 0.1),
        init("w2", (8, 1, 3, 3), 0.5), init("b2", (8,), 0.1),
        init("w3", (8, 8, 1, 1), 0.4), init("b3", (8,), 0.1),
        init("wf", (5, 8), 0.5), init("bf", (5,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="depthwise", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("Add", ["c3", "r1"], ["sum"], name="residual"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


class Reader(CalibrationDataReader):
    def __init__(self, xs):
        self.xs = list(xs)

    def get_next(self):
        return {"input": self.xs.pop()[None]} if self.xs else None


def main():
    os.makedirs(OUT, exist_ok=True)
    fp32 = os.path.join(OUT, "tiny.fp32.onnx")
    onnx.save(fp32_model(), fp32)
    calib = rng.uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    for fmt, name in [(QuantFormat.QOperator, "qoperator"), (QuantFormat.QDQ, "qdq")]:
        quantize_static(fp32, os.path.join(OUT, f"tiny.{name}.onnx"), Reader(calib), quant_format=fmt, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(fp32)
    onnx.save(fp32_matmul_model(), fp32)
    quantize_static(fp32, os.path.join(OUT, "tiny_matmul.qoperator.onnx"), Reader(calib), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(fp32)
    x = rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    np.save(os.path.join(OUT, "tiny.inputs.npy"), x)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.x64quantprecision", "1")
    for name in ["tiny", "tiny_matmul"]:
        s = ort.InferenceSession(os.path.join(OUT, f"{name}.qoperator.onnx"), so, providers=["CPUExecutionProvider"])
        y = np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
        np.save(os.path.join(OUT, f"{name}.qoperator.ort_exact.npy"), y.astype(np.float32))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
