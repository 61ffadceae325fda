#!/usr/bin/env python3
"""Score an ONNX model with ONNX Runtime on an image folder, the way `subq eval` does.

    python tools/ort_eval.py --model Q.onnx --images DIR \
        --preset efficientnet-lite|keras-mobilenet|torchvision \
        [--labels SYNSETS] [--reference FP32.onnx] [--limit N] [--opt disable|default] [--exact] [--json FILE]
        [--inputs X.npy (tensors from `subq eval --save-inputs`)] [--save-logits L.npy]

Preprocessing is Pillow's and matches subq's (crates/calib/src/preprocess.rs):
  * crop: the shorter side is resized to round(size / crop_ratio) (never below size), the
    longer side keeps the aspect ratio (rounded), Image.BILINEAR; then the centre
    height × width window, offsets floored ((resized − size) // 2);
  * stretch: resize straight to width × height;
  * out = (pixel − mean) / std with mean/std in 0..255 units, CHW, float32.
Rounding is half away from zero, like Rust's f64::round.

Labels: the WordNet id is the parent folder (ImageFolder layout) or the file-name prefix before
the first '_'; the class index is its 0-based line number in the synsets file. Images are the
.jpg/.jpeg/.png files directly in DIR or in its immediate subfolders, sorted by path.

Prints n, top-1, top-5 and, with --reference, top-1 agreement and the logits SQNR
10·log10(Σ ref² / Σ (ref − out)²) over all logits of all images. Run it with the project venv:
PY=$(bash tools/setup_venv.sh).
"""

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

PRESETS = {
    "efficientnet-lite": dict(resize_mode="crop", crop_ratio=0.875, mean=[127.0] * 3, std=[128.0] * 3, channel_order="rgb"),
    "keras-mobilenet": dict(resize_mode="stretch", crop_ratio=1.0, mean=[127.5] * 3, std=[127.5] * 3, channel_order="rgb"),
    "torchvision": dict(
        resize_mode="crop",
        crop_ratio=0.875,
        mean=[0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
        std=[0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
        channel_order="rgb",
    ),
}

WNID = re.compile(r"^n[0-9]{8}$")
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


def round_half_away(x):
    """Rust's f64::round (Python's round() rounds half to even)."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def f32_to_f64(x):
    """subq keeps ratios/mean/std as f32; widen the same way."""
    return float(np.float32(x))


def crop_resize_dims(iw, ih, tw, th, ratio):
    ratio = f32_to_f64(ratio)
    scale_to = lambda target: max(int(round_half_away(target / ratio)), target)
    proportional = lambda other, new_short, short: int(round_half_away(other * new_short / short))
    if iw <= ih:
        nw = scale_to(tw)
        rw, rh = nw, proportional(ih, nw, iw)
    else:
        nh = scale_to(th)
        rw, rh = proportional(iw, nh, ih), nh
    return max(rw, tw), max(rh, th)


def preprocess(path, p, h, w):
    with Image.open(path) as im:
        img = im.convert("RGB")
    iw, ih = img.size
    if iw == 0 or ih == 0:
        raise ValueError(f"{path}: image has zero width or height")
    if p["resize_mode"] == "stretch":
        win = img.resize((w, h), Image.BILINEAR) if (iw, ih) != (w, h) else img
    else:
        rw, rh = crop_resize_dims(iw, ih, w, h, p["crop_ratio"])
        left, top = (rw - w) // 2, (rh - h) // 2
        resized = img.resize((rw, rh), Image.BILINEAR) if (rw, rh) != (iw, ih) else img
        win = resized.crop((left, top, left + w, top + h))
    px = np.asarray(win, dtype=np.uint8).astype(np.float32)  # H×W×3, RGB
    order = [0, 1, 2] if p["channel_order"] == "rgb" else [2, 1, 0]
    mean = np.array(p["mean"], dtype=np.float32)
    std = np.array(p["std"], dtype=np.float32)
    chw = px[:, :, order].transpose(2, 0, 1)
    return ((chw - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def list_images(d):
    d = Path(d)
    if not d.is_dir():
        raise SystemExit(f"not a directory: {d}")
    items = []
    for p in d.iterdir():
        if p.is_dir():
            folder_wnid = p.name if WNID.match(p.name) else None
            for s in p.iterdir():
                if s.is_file() and s.suffix.lower() in IMAGE_EXTS:
                    items.append((s, folder_wnid or wnid_from_name(s)))
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            items.append((p, wnid_from_name(p)))
    if not items:
        raise SystemExit(f"no images (.jpg/.jpeg/.png) in {d}")
    # Component-wise, like Rust's Path ordering.
    items.sort(key=lambda it: it[0].parts)
    return items


def wnid_from_name(p):
    prefix = p.stem.split("_")[0]
    return prefix if WNID.match(prefix) else None


def load_synsets(path):
    text = Path(path).read_text()
    body = text[:-1] if text.endswith("\n") else text
    index = {}
    for i, line in enumerate(body.split("\n")):
        parts = line.strip().split()
        if not parts:
            raise SystemExit(f"{path}:{i + 1}: empty line (each line must be 'wnid name...')")
        if parts[0] in index:
            raise SystemExit(f"{path}:{i + 1}: duplicate WordNet id '{parts[0]}'")
        index[parts[0]] = i
    return index


def make_session(path, opt, threads, exact=False):
    so = ort.SessionOptions()
    if exact:
        # ORT's exact u8s8 path; its default one saturates on AVX2 CPUs without VNNI (see
        # tools/ort_bench.py).
        so.add_session_config_entry("session.x64quantprecision", "1")
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if opt == "disable" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def image_input(sess, path):
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise SystemExit(f"{path}: model has {len(inputs)} inputs; expected one N×3×H×W image input")
    i = inputs[0]
    s = i.shape
    if i.type != "tensor(float)" or len(s) != 4 or s[1] != 3 or not all(isinstance(d, int) and d > 1 for d in s[2:]):
        raise SystemExit(f"{path}: input '{i.name}' is {i.type} {s}, not a float N×3×H×W image")
    return i.name, s[2], s[3]


def top_k(logits, k):
    # Stable descending order: ties keep the lower class first, like subq's top_k.
    return np.argsort(-logits, kind="stable")[:k]


def pct(x):
    return "—" if x is None else f"{100 * x:.2f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--labels", type=Path, help="synsets file (line number = class index)")
    ap.add_argument("--reference", type=Path, help="FP32 model: top-1 agreement and logits SQNR")
    ap.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    ap.add_argument("--opt", choices=["default", "disable"], default="default", help="ORT graph optimizations (default: all)")
    ap.add_argument("--exact", action="store_true",
                    help="the model runs on ORT's exact u8s8 path (session.x64quantprecision; the reference model as before)")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT's default)")
    ap.add_argument("--json", type=Path, help="write the results as JSON to this file ('-' = stdout)")
    ap.add_argument("--resize-mode", choices=["crop", "stretch"], help="override the preset")
    ap.add_argument("--crop-ratio", type=float, help="override the preset")
    ap.add_argument("--mean", type=lambda s: [float(v) for v in s.split(",")], help="override the preset: r,g,b in 0..255 units")
    ap.add_argument("--std", type=lambda s: [float(v) for v in s.split(",")], help="override the preset: r,g,b in 0..255 units")
    ap.add_argument("--channel-order", choices=["rgb", "bgr"], help="override the preset")
    ap.add_argument("--inputs", type=Path, help="float32 .npy [N,3,H,W] written by `subq eval --save-inputs`: feed these tensors instead of decoding the images (which then only give the labels), so both engines see identical inputs")
    ap.add_argument("--save-logits", type=Path, help="write the logits as float32 .npy [N, classes], in image order")
    a = ap.parse_args()

    p = dict(PRESETS[a.preset])
    for k in ("resize_mode", "crop_ratio", "mean", "std", "channel_order"):
        v = getattr(a, k)
        if v is not None:
            p[k] = v
    if not (0.0 < p["crop_ratio"] <= 1.0):
        ap.error("--crop-ratio must be in (0, 1]")
    if len(p["mean"]) != 3 or len(p["std"]) != 3 or any(s == 0 for s in p["std"]):
        ap.error("--mean and --std take 3 values; std must be non-zero")

    sess = make_session(a.model, a.opt, a.threads, a.exact)
    in_name, h, w = image_input(sess, a.model)
    ref = None
    if a.reference:
        ref = make_session(a.reference, a.opt, a.threads)
        ref_name, rh, rw = image_input(ref, a.reference)
        if (rh, rw) != (h, w):
            raise SystemExit(f"reference input is {rh}×{rw}, model input is {h}×{w}")

    items = list_images(a.images)
    if a.limit is not None:
        items = items[: a.limit]
    labels = [None] * len(items)
    if a.labels:
        syn = load_synsets(a.labels)
        for i, (path, wnid) in enumerate(items):
            if wnid not in syn:
                raise SystemExit(f"{path}: no label (WordNet id {wnid!r} not in {a.labels})")
            labels[i] = syn[wnid]

    given = None
    if a.inputs:
        given = np.load(a.inputs)
        if given.dtype != np.float32 or given.shape[1:] != (3, h, w) or given.shape[0] != len(items):
            raise SystemExit(f"{a.inputs}: {given.dtype} {given.shape}, expected float32 [{len(items)}, 3, {h}, {w}] (one per image)")

    n = top1 = top5 = agree = ref_top1 = 0
    signal = noise = 0.0
    all_logits = []
    for idx, ((path, _), label) in enumerate(zip(items, labels)):
        x = given[idx : idx + 1] if given is not None else preprocess(path, p, h, w)[None]
        out = np.asarray(sess.run(None, {in_name: x})[0], dtype=np.float32).reshape(-1)
        all_logits.append(out)
        top = top_k(out, 5)
        n += 1
        if label is not None:
            top1 += int(top[0] == label)
            top5 += int(label in top)
        if ref is not None:
            r = np.asarray(ref.run(None, {ref_name: x})[0], dtype=np.float32).reshape(-1)
            rtop = int(top_k(r, 1)[0])
            agree += int(rtop == top[0])
            if label is not None:
                ref_top1 += int(rtop == label)
            r64, o64 = r.astype(np.float64), out.astype(np.float64)
            signal += float(np.sum(r64 * r64))
            noise += float(np.sum((r64 - o64) ** 2))
        if sys.stderr.isatty():
            print(f"\r{idx + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)

    if a.save_logits:
        np.save(a.save_logits, np.stack(all_logits).astype(np.float32))

    frac = lambda c: c / n if n else 0.0
    has_labels, has_ref = a.labels is not None, ref is not None
    report = {
        "model": f"onnxruntime {ort.__version__} CPU (opt={a.opt}): {a.model}",
        "n": n,
        "skipped": [],
        "top1": frac(top1) if has_labels else None,
        "top5": frac(top5) if has_labels else None,
        "agreement": frac(agree) if has_ref else None,
        "sqnr_db": (math.inf if noise == 0 else 10 * math.log10(signal / noise)) if has_ref else None,
        "reference_top1": frac(ref_top1) if has_ref and has_labels else None,
    }
    print(f"model:      {report['model']}")
    print(f"images:     {n}")
    if has_labels:
        print(f"top-1:      {pct(report['top1'])}")
        print(f"top-5:      {pct(report['top5'])}")
    if has_ref:
        if has_labels:
            print(f"ref top-1:  {pct(report['reference_top1'])}")
        print(f"agreement:  {pct(report['agreement'])} (top-1 equal to the reference)")
        print(f"SQNR:       {report['sqnr_db']:.2f} dB (logits vs reference)")
    if a.json:
        # JSON has no Infinity: write an infinite SQNR (identical logits) as null, like serde_json.
        if report["sqnr_db"] is not None and math.isinf(report["sqnr_db"]):
            report["sqnr_db"] = None
        text = json.dumps(report, indent=2) + "\n"
        if str(a.json) == "-":
            sys.stdout.write(text)
        else:
            tmp = f"{a.json}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
