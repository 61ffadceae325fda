#!/usr/bin/env python3
"""subq vs ONNX Runtime latency as paired ratios, for noisy shared hosts.

    PY=$(bash tools/setup_venv.sh)
    $PY tools/bench_pairs.py --subq target/release/subq \
        --pair SUBQ_MODEL.onnx ORT_MODEL.onnx [--pair ...] [--rounds 15] [--runs 40] [--json]

With `--against ort-exact`, ONNX Runtime runs with `session.x64quantprecision`: its u8×s8
kernels then stay exact where the weights leave [-64, 63], as subq's always do. Its default path
on AVX2 CPUs without VNNI uses `vpmaddubsw`, whose 16-bit pair sums saturate, so it computes
something else than the file says.

With `--against subq`, the second file of each pair is timed by subq too: the overhead of one
export over another (e.g. subtensor over plain per-tensor) on our own engine, with the same
pairing.

A single long run of each engine, one after the other, is at the mercy of whatever else the host
does during each run: on this 2-core shared machine the same file's median moves by ±30% between
runs minutes apart. Here the two engines alternate in short blocks (`--runs` timed runs each,
after a short warm-up): `subq bench` as a subprocess, then ONNX Runtime on a session kept open in
this process. Each round gives one ratio subq/ORT from the two block medians taken seconds apart;
the table reports the median ratio over the rounds and its spread (min–max, and the middle half),
so a slow phase of the host hits both sides of a round instead of one row of the table.

Both engines time batch 1, `--threads` threads, on a random input of the model's input shape
(uniform in [-1, 1), as `subq bench` and tools/ort_bench.py draw it). ONNX Runtime runs with its
default (all) graph optimizations.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ort_bench  # noqa: E402  (same session setup and inputs as the single-run script)


def subq_median(subq, model, runs, warmup, threads):
    out = subprocess.run(
        [subq, "bench", "--model", model, "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    d = json.loads(out)
    d = d[0] if isinstance(d, list) else d
    return float(d["median_ms"])


def ort_median(sess, feeds, runs, warmup):
    return float(np.percentile(ort_bench.time_runs(sess, feeds, runs, warmup), 50))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subq", required=True, help="path of the subq binary")
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("SUBQ_MODEL", "ORT_MODEL"),
                    help="file timed by subq, file timed by ONNX Runtime (may be the same file)")
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per pair (default 15)")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per block (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs before each block (default 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", choices=["ort", "ort-exact", "subq"], default="ort",
                    help="engine that times the second file of each pair (default ort; ort-exact: ORT with "
                         "session.x64quantprecision, its non-saturating u8s8 path, see tools/ort_bench.py)")
    ap.add_argument("--json", action="store_true", help="print a JSON list (one object per pair)")
    a = ap.parse_args()
    if a.rounds < 1 or a.runs < 1 or a.warmup < 0 or a.threads < 1:
        ap.error("--rounds, --runs and --threads must be >= 1, --warmup >= 0")
    for s, o in a.pair:
        for m in (s, o):
            if not os.path.isfile(m):
                ap.error(f"no such model: {m}")

    results = []
    for s_model, o_model in a.pair:
        if a.against in ("ort", "ort-exact"):
            sess = ort_bench.make_session(o_model, a.threads, "default", exact=a.against == "ort-exact")
            feeds = ort_bench.random_feeds(sess, np.random.default_rng(0x5EED))
            other = lambda: ort_median(sess, feeds, a.runs, a.warmup)  # noqa: E731
        else:
            other = lambda: subq_median(a.subq, o_model, a.runs, a.warmup, a.threads)  # noqa: E731
        s_ms, o_ms = [], []
        for r in range(a.rounds):
            s_ms.append(subq_median(a.subq, s_model, a.runs, a.warmup, a.threads))
            o_ms.append(other())
            print(f"bench_pairs: {os.path.basename(s_model)} / {os.path.basename(o_model)} round {r + 1}: "
                  f"{s_ms[-1]:.2f} / {o_ms[-1]:.2f} ms", file=sys.stderr, flush=True)
        ratios = np.array(s_ms) / np.array(o_ms)
        results.append({
            "subq_model": s_model,
            "ort_model": o_model,
            "against": a.against,
            "rounds": a.rounds,
            "runs_per_block": a.runs,
            "threads": a.threads,
            "subq_median_ms": float(np.median(s_ms)),
            "ort_median_ms": float(np.median(o_ms)),
            "ratio_median": float(np.median(ratios)),
            "ratio_q25": float(np.percentile(ratios, 25)),
            "ratio_q75": float(np.percentile(ratios, 75)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "onnxruntime": ort_bench.ort.__version__,
        })
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    other = {"ort": "ORT", "ort-exact": "ORT exact", "subq": "subq"}[a.against]
    print(f"| subq file | {other} file | subq ms | {other} ms | ratio (median of rounds) | middle half | min–max |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {os.path.basename(r['subq_model'])} | {os.path.basename(r['ort_model'])} | {r['subq_median_ms']:.2f} | "
              f"{r['ort_median_ms']:.2f} | **{r['ratio_median']:.2f}** | {r['ratio_q25']:.2f}–{r['ratio_q75']:.2f} | "
              f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} |")
    print()
    print(f"{a.rounds} alternating rounds per pair, {a.runs} timed runs per block after {a.warmup} warm-up, batch 1, "
          f"{a.threads} thread(s); " + (f"ONNX Runtime {ort_bench.ort.__version__} CPU, default optimizations"
                                        + (", session.x64quantprecision (exact u8s8)" if a.against == "ort-exact" else "") + "; "
                                        if a.against != "subq" else "both files on subq; ")
          + f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
