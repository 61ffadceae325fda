#!/usr/bin/env python3
"""ONNX Runtime CPU latency of ONNX models, for comparison with `subq bench`.

    python tools/ort_bench.py MODEL.onnx [MODEL2.onnx ...] --runs 200 --warmup 20 --threads 1 \
        [--opt default|disable] [--exact] [--json]

Each model gets a batch-1 random input of its input shape (symbolic dimensions → 1), drawn
uniformly from [-1, 1) like subq's. The session uses intra_op_num_threads=--threads,
inter_op_num_threads=1 and sequential execution. Each timed run is one session.run(), timed
with time.perf_counter(); median/p10/p90 are numpy's linearly interpolated percentiles (the
same definition `subq bench` uses). Run it with the project venv: PY=$(bash tools/setup_venv.sh).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def make_session(path, threads, opt, exact=False):
    """`exact`: ORT's session.x64quantprecision. Without VNNI, ORT's default u8×s8 kernels use
    vpmaddubsw, whose 16-bit pair sums saturate: fast, but not the file's arithmetic (BENCHMARKS.md,
    "ONNX Runtime's fused integer path on this CPU"). With it, ORT keeps exact products where the
    weights leave [-64, 63], as subq's kernels always do."""
    so = ort.SessionOptions()
    if exact:
        so.add_session_config_entry("session.x64quantprecision", "1")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if opt == "disable" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def random_feeds(sess, rng):
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = DTYPES.get(inp.type)
        if dtype is None:
            raise SystemExit(f"{inp.name}: unsupported input type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def time_runs(sess, feeds, runs, warmup):
    """Milliseconds of `runs` session.run() calls after `warmup` untimed ones."""
    for _ in range(warmup):
        sess.run(None, feeds)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def bench(path, runs, warmup, threads, opt, exact=False):
    sess = make_session(path, threads, opt, exact)
    feeds = random_feeds(sess, np.random.default_rng(0x5EED))
    times = time_runs(sess, feeds, runs, warmup)
    median = float(np.percentile(times, 50))
    return {
        "model": path,
        "engine": f"onnxruntime {ort.__version__} CPU (opt={opt}{', exact u8s8' if exact else ''})",
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "median_ms": median,
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "images_per_s": 1e3 / median,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="MODEL.onnx")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--opt", choices=["default", "disable"], default="default", help="ORT graph optimizations (default: all)")
    ap.add_argument("--exact", action="store_true",
                    help="ORT's exact u8s8 path (session.x64quantprecision); without it, AVX2 CPUs without VNNI saturate")
    ap.add_argument("--json", action="store_true", help="print a JSON list (one object per model) on stdout")
    a = ap.parse_args()
    if a.runs < 1 or a.warmup < 0 or a.threads < 1:
        ap.error("--runs and --threads must be >= 1, --warmup >= 0")
    for m in a.models:
        if not os.path.isfile(m):
            ap.error(f"no such model: {m}")

    results = []
    for m in a.models:
        r = bench(m, a.runs, a.warmup, a.threads, a.opt, a.exact)
        results.append(r)
        if not a.json:
            print(
                f"{m}: median {r['median_ms']:.3f} ms, p10 {r['p10_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms "
                f"({r['images_per_s']:.1f} images/s, {a.threads} thread(s), {r['engine']})",
                flush=True,
            )
    rss = peak_rss_mib()
    if a.json:
        for r in results:
            r["process_peak_rss_mib"] = rss
        json.dump(results, sys.stdout, indent=2)
        print()
    elif rss is not None:
        print(f"peak RSS (whole process, all models): {rss:.1f} MiB")


if __name__ == "__main__":
    main()
