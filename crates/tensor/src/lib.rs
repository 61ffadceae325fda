//! Dense tensors, element types and quantization parameters: the vocabulary every other subq crate speaks.

mod qparams;
pub use qparams::{QParams, QuantRange};

use serde::{Deserialize, Serialize};

/// Element type of a tensor. Only the types that mobile CNNs and QDQ files use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    U8,
    I8,
    I32,
    I64,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I32 => "int32",
            DType::I64 => "int64",
        };
        f.write_str(s)
    }
}

/// Element storage. One variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but {actual} were given")]
    LengthMismatch { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("expected a {expected} tensor, found {actual}")]
    WrongType { expected: DType, actual: DType },
}

/// A dense row-major tensor with a static shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let t = Tensor { shape, data };
        let (expected, actual) = (numel(&t.shape), t.len());
        if expected != actual {
            return Err(TensorError::LengthMismatch { shape: t.shape, expected, actual });
        }
        Ok(t)
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, TensorData::F32(data))
    }

    pub fn zeros_f32(shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor { shape, data: TensorData::F32(vec![0.0; n]) }
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor { shape: vec![], data: TensorData::F32(vec![v]) }
    }

    pub fn dtype(&self) -> DType {
        match &self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::U8(_) => DType::U8,
            TensorData::I8(_) => DType::I8,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype().size_of()
    }

    pub fn as_f32(&self) -> Result<&[f32], TensorError> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            _ => Err(TensorError::WrongType { expected: DType::F32, actual: self.dtype() }),
        }
    }

    pub fn as_f32_mut(&mut self) -> Result<&mut Vec<f32>, TensorError> {
        let actual = self.dtype();
        match &mut self.data {
            TensorData::F32(v) => Ok(v),
            _ => Err(TensorError::WrongType { expected: DType::F32, actual }),
        }
    }

    /// Values widened to f32 (integers converted exactly where representable). Used for
    /// constants whose type varies between exporters (pads, shapes, clip bounds).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Values as i64 (floats truncated). Used for shape-like constants.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I64(v) => v.clone(),
        }
    }

    /// Integer values as i32 (for zero-points of either signedness).
    pub fn to_i32_vec(&self) -> Vec<i32> {
        self.to_i64_vec().into_iter().map(|x| x as i32).collect()
    }

    pub fn min_max(&self) -> (f32, f32) {
        self.to_f32_vec()
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
    }
}

/// Signal-to-quantization-noise ratio in dB: 10·log10(Σ ref² / Σ (ref − test)²).
/// Identical inputs give +inf.
pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    let (mut signal, mut noise) = (0f64, 0f64);
    for (&r, &t) in reference.iter().zip(test) {
        signal += (r as f64) * (r as f64);
        noise += ((r - t) as f64) * ((r - t) as f64);
    }
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_wrong_length() {
        assert!(Tensor::f32(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::f32(vec![2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn sqnr_of_known_noise() {
        let r = [1.0f32, -1.0, 1.0, -1.0];
        let t = [1.1f32, -0.9, 1.1, -0.9];
        // signal 4, noise 4·0.01 → 20 dB
        assert!((sqnr_db(&r, &t) - 20.0).abs() < 1e-3);
        assert!(sqnr_db(&r, &r).is_infinite());
    }
}
