//! Interop with ONNX Runtime: our QDQ files load in ORT and score like our int8 engine scores
//! them; quantization is deterministic. Needs the venv made by `tools/setup_venv.sh` (the README's
//! test command `bash tools/test.sh` makes it and sets SUBQ_PYTHON).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = std::env::var_os("SUBQ_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(p.exists(), "no Python with onnxruntime at {}: run `bash tools/test.sh` (or tools/setup_venv.sh)", p.display());
    p
}

fn subq(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_subq")).args(args).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "subq {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn quantize(scheme: &str, out: &Path, calib_limit: &str) {
    let mut args = vec!["quantize", "--model", "assets/models/efficientnet_lite0.onnx", "--calib", "assets/images/calib", "--calib-limit", calib_limit, "--scheme", scheme, "--preset", "efficientnet-lite", "-o", out.to_str().unwrap()];
    if scheme == "subtensor" {
        // CLE fixed on (not tried both ways, which would double the time); otherwise the file
        // users ship: split convs summed by Adds, uint8 ReLU6 bounds, bias correction.
        args.push("--cle");
    }
    subq(&args);
}

/// ONNX Runtime (graph optimizations off: the file's written semantics) and our int8 engine give
/// the same top-1 within 0.3 points on the 400 eval images, for a per-tensor, a per-channel and a
/// subtensor file. Each side decodes the JPEGs itself (Pillow vs zune-jpeg), which alone moves
/// FP32 top-1 by one image (0.25 points), so the margin covers decoding as well as arithmetic.
#[test]
fn onnxruntime_scores_our_qdq_files_like_our_engine() {
    let dir = tempfile::tempdir().unwrap();
    for scheme in ["per-channel", "per-tensor", "subtensor"] {
        let model = dir.path().join(format!("{scheme}.onnx"));
        quantize(scheme, &model, "100");
        let ours = dir.path().join(format!("{scheme}.subq.json"));
        subq(&["eval", "--model", model.to_str().unwrap(), "--images", "assets/images/eval", "--labels", "assets/imagenet_synsets.txt", "--json", ours.to_str().unwrap()]);
        let theirs = dir.path().join(format!("{scheme}.ort.json"));
        let status = Command::new(python())
            .current_dir(root())
            .args(["tools/ort_eval.py", "--model", model.to_str().unwrap(), "--images", "assets/images/eval", "--labels", "assets/imagenet_synsets.txt", "--preset", "efficientnet-lite", "--opt", "disable", "--json", theirs.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "ONNX Runtime could not run our {scheme} file");
        let (a, b) = (json(&ours)["top1"].as_f64().unwrap(), json(&theirs)["top1"].as_f64().unwrap());
        eprintln!("{scheme}: subq int8 engine top-1 {:.2}%, ONNX Runtime {:.2}%", 100.0 * a, 100.0 * b);
        assert!((a - b).abs() <= 0.003 + 1e-9, "{scheme}: subq {a} vs ORT {b}");
        assert_eq!(json(&ours)["n"].as_u64(), Some(400));
    }
}

#[test]
fn quantize_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    for scheme in ["per-tensor", "subtensor"] {
        quantize(scheme, &a, "8");
        quantize(scheme, &b, "8");
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{scheme}: two runs of quantize wrote different bytes");
    }
}
