//! Time-bounded byte-mutation fuzzing of the ONNX importer and the QDQ reader (the int8 engine's
//! lowering of a QDQ graph, then a run, and the FP32 executor on the same graph). Whatever the
//! bytes: a model or an error, never a panic.
//!
//! Seed: a small QDQ model written by our own pipeline (conv 3×3/2 → ReLU6 → depthwise → ReLU6
//! → pointwise → residual Add → global pool → Gemm), small enough that most mutated bytes land in
//! the graph structure rather than in weights. `SUBQ_FUZZ_SECONDS` sets the budget (default 3 s;
//! `tools/test.sh`, i.e. CI, runs 60 s). A panic saves the input under
//! `target/fuzz-crashes/` and fails with its seed; fixed crashes live on as files in
//! `tests/fuzz_regressions/`, replayed by `known_crashes_stay_fixed`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{input, seed_fp32_graph, Rng};
use subq_onnx::{export_model, import_model, ImportOptions};
use subq_quant::{quantize, QuantConfig, Scheme};
use subq_runtime::{Fp32Executor, Int8Engine};
use subq_tensor::Tensor;

/// The seed file: the FP32 graph quantized per-tensor with subtensor splits (so multi-part convs
/// and the Add tree are in it) and with CLE (per-channel ReLU6 bounds behind a DequantizeLinear).
fn seed_qdq_bytes() -> Vec<u8> {
    let g = seed_fp32_graph();
    let inputs: Vec<Tensor> = (1..=8).map(input).collect();
    let mut cfg = QuantConfig::new(Scheme::Subtensor);
    cfg.cle_auto = false;
    cfg.cle = true;
    cfg.subtensor.size_budget = 1.0;
    cfg.subtensor.latency_budget = 1.0;
    let (q, _) = quantize(&g, &inputs, &cfg, false).unwrap();
    export_model(&q)
}

fn mutate(mut b: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        let at = rng.below(n);
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            // Protobuf varints: a value where a length, a tag or a dim may sit.
            2 => b[at] = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            3 => b.truncate(at),
            4 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            _ => {
                // Copy a run from elsewhere (duplicates fields, shifts lengths).
                let from = rng.below(n);
                let k = (1 + rng.below(32)).min(n - from);
                let chunk = b[from..from + k].to_vec();
                b.splice(at..at, chunk);
            }
        }
    }
    b
}

/// Everything the QDQ reader does with a file: import, lower for the int8 engine, run both
/// engines. Errors are fine; panics are not (the caller catches them).
fn exercise(bytes: &[u8]) {
    let Ok(g) = import_model(bytes, Path::new("fuzz.onnx"), &ImportOptions::default()) else { return };
    let Some(shape) = g.inputs.first().and_then(|i| g.shape(i)).map(|s| s.to_vec()) else { return };
    // A mutated input shape may legitimately ask for a huge tensor; the fuzzer does not feed it.
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if shape.len() != 4 || elements.is_none_or(|e| e == 0 || e > 1 << 16) {
        return;
    }
    let x = Tensor::f32(shape, vec![0.5; elements.unwrap()]).unwrap();
    if let Ok(e) = Int8Engine::new(&g) {
        let _ = e.run(x.clone());
    }
    let _ = Fp32Executor::new(&g).run(vec![x]);
}

fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes")
}

#[test]
fn mutated_qdq_models_never_panic() {
    let seconds: u64 = std::env::var("SUBQ_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let seed = seed_qdq_bytes();
    // The unmutated seed must go all the way through, or the fuzzer would only test rejection.
    let g = import_model(&seed, Path::new("seed.onnx"), &ImportOptions::default()).unwrap();
    let e = Int8Engine::new(&g).unwrap();
    assert_eq!(e.run(input(99)).unwrap()[0].shape, vec![1, 5]);
    // A new stream each run (CI explores further every time); `SUBQ_FUZZ_SEED` replays one, and
    // a crashing input is saved as a file anyway.
    let base: u64 = std::env::var("SUBQ_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("fuzz: SUBQ_FUZZ_SEED={base}");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut cases, mut imported) = (0u64, 0u64);
    while Instant::now() < deadline {
        let case_seed = base ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(cases + 1);
        let bytes = mutate(seed.clone(), &mut Rng(case_seed));
        imported += import_model(&bytes, Path::new("fuzz.onnx"), &ImportOptions::default()).is_ok() as u64;
        if std::panic::catch_unwind(|| exercise(&bytes)).is_err() {
            std::fs::create_dir_all(crash_dir()).unwrap();
            let path = crash_dir().join(format!("crash-{case_seed:016x}.onnx"));
            std::fs::write(&path, &bytes).unwrap();
            panic!("QDQ reader panicked on case seed {case_seed:#x}; input saved to {}", path.display());
        }
        cases += 1;
    }
    eprintln!("fuzz: {cases} mutated models in {seconds} s, {imported} still imported");
    assert!(cases > 0);
}

#[test]
fn known_crashes_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut replayed = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "onnx") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(std::panic::catch_unwind(|| exercise(&bytes)).is_ok(), "{} panics again", path.display());
            replayed += 1;
        }
    }
    eprintln!("{replayed} regression inputs replayed");
}
