//! Byte-mutation fuzzing of the importer (bounded, runs with the tests): whatever the bytes, import
//! returns a model or an error — never a panic. Mutations of a real QDQ model: flipped bytes,
//! overwritten runs, truncation and insertion.

use std::path::Path;

use proptest::prelude::*;
use subq_onnx::{import_model, ImportOptions};

fn model_bytes() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/mobilenetv2_1.0_160_dogs.ort_qdq_per_tensor.onnx")).unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Overwrite { at: usize, bytes: Vec<u8> },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions are fractions of the file so that every region (header, graph, weights) is hit.
    prop_oneof![
        (0.0f64..1.0, 1u8..=255).prop_map(|(f, mask)| Mutation::Flip { at: (f * 1e9) as usize, mask }),
        (0.0f64..1.0, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(f, bytes)| Mutation::Overwrite { at: (f * 1e9) as usize, bytes }),
        (0.0f64..1.0).prop_map(|f| Mutation::Truncate { len: (f * 1e9) as usize }),
        (0.0f64..1.0, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(f, bytes)| Mutation::Insert { at: (f * 1e9) as usize, bytes }),
    ]
}

fn apply(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip { at, mask } => {
                let i = at % n;
                if i < b.len() {
                    b[i] ^= mask;
                }
            }
            Mutation::Overwrite { at, bytes } => {
                let i = at % n;
                for (k, v) in bytes.iter().enumerate() {
                    if i + k < b.len() {
                        b[i + k] = *v;
                    }
                }
            }
            Mutation::Truncate { len } => b.truncate(len % n),
            Mutation::Insert { at, bytes } => {
                let i = at % n;
                b.splice(i..i, bytes.iter().copied());
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_models_never_panic(ms in prop::collection::vec(mutation(), 1..6)) {
        let bytes = apply(model_bytes(), &ms);
        let result = std::panic::catch_unwind(|| {
            let _ = import_model(&bytes, Path::new("fuzz.onnx"), &ImportOptions::default());
        });
        prop_assert!(result.is_ok(), "import panicked on mutations {ms:?}");
    }
}
