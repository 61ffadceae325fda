//! Affine quantization parameters: real = scale · (q − zero_point).

use serde::{Deserialize, Serialize};

use crate::DType;

/// Integer range a quantized tensor lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuantRange {
    /// uint8 0..=255
    U8,
    /// int8 −128..=127
    I8,
    /// int8 restricted to −127..=127 so that symmetric weights have a symmetric grid
    /// (what TFLite and ONNX Runtime use for symmetric per-channel weights).
    I8Narrow,
}

impl QuantRange {
    #[inline]
    pub fn bounds(self) -> (i32, i32) {
        match self {
            QuantRange::U8 => (0, 255),
            QuantRange::I8 => (-128, 127),
            QuantRange::I8Narrow => (-127, 127),
        }
    }
    pub fn dtype(self) -> DType {
        match self {
            QuantRange::U8 => DType::U8,
            QuantRange::I8 | QuantRange::I8Narrow => DType::I8,
        }
    }
}

/// Quantization parameters of one tensor: one (scale, zero_point) for per-tensor, or one per
/// slice along `axis` for per-channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    pub axis: Option<usize>,
    pub range: QuantRange,
}

impl QParams {
    pub fn per_tensor(scale: f32, zero_point: i32, range: QuantRange) -> QParams {
        QParams { scale: vec![scale], zero_point: vec![zero_point], axis: None, range }
    }

    pub fn is_per_tensor(&self) -> bool {
        self.scale.len() == 1
    }

    /// Asymmetric parameters whose grid covers [min, max] and always contains 0 exactly
    /// (so zero padding and ReLU outputs quantize without error).
    pub fn asymmetric(min: f32, max: f32, range: QuantRange) -> QParams {
        let (qmin, qmax) = range.bounds();
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let span = hi - lo;
        if !span.is_finite() || span <= 0.0 {
            return QParams::per_tensor(1.0, 0, range);
        }
        let scale = span / (qmax - qmin) as f32;
        let zp = (qmin as f32 - lo / scale).round().clamp(qmin as f32, qmax as f32) as i32;
        QParams::per_tensor(scale, zp, range)
    }

    /// Symmetric parameters (zero_point 0) covering [−absmax, absmax].
    pub fn symmetric(absmax: f32, range: QuantRange) -> QParams {
        let (_, qmax) = range.bounds();
        let zp = if range == QuantRange::U8 { 128 } else { 0 };
        let qmax = if range == QuantRange::U8 { 127 } else { qmax };
        let scale = if absmax > 0.0 && absmax.is_finite() { absmax / qmax as f32 } else { 1.0 };
        QParams::per_tensor(scale, zp, range)
    }

    /// Which entry of `scale`/`zero_point` applies to element `flat` of a row-major tensor of
    /// `shape`: 0 when per-tensor, else its index along `axis`.
    #[inline]
    pub fn channel_of(&self, shape: &[usize], flat: usize) -> usize {
        match self.axis {
            Some(a) if self.scale.len() > 1 => {
                let inner: usize = shape[a + 1..].iter().product();
                (flat / inner.max(1)) % shape[a]
            }
            _ => 0,
        }
    }

    #[inline]
    pub fn scale_at(&self, channel: usize) -> f32 {
        if self.scale.len() == 1 { self.scale[0] } else { self.scale[channel] }
    }

    #[inline]
    pub fn zero_point_at(&self, channel: usize) -> i32 {
        if self.zero_point.len() == 1 { self.zero_point[0] } else { self.zero_point[channel] }
    }

    /// q = clamp(round_half_even(x / scale) + zp). Round-half-to-even is what ONNX
    /// QuantizeLinear specifies.
    #[inline]
    pub fn quantize_value(&self, x: f32, channel: usize) -> i32 {
        let (qmin, qmax) = self.range.bounds();
        let q = round_ties_even(x / self.scale_at(channel)) as i64 + self.zero_point_at(channel) as i64;
        q.clamp(qmin as i64, qmax as i64) as i32
    }

    #[inline]
    pub fn dequantize_value(&self, q: i32, channel: usize) -> f32 {
        (q - self.zero_point_at(channel)) as f32 * self.scale_at(channel)
    }

    /// Quantize then dequantize ("fake quantization"): what the value becomes in the int8 model.
    #[inline]
    pub fn fake_quantize(&self, x: f32, channel: usize) -> f32 {
        self.dequantize_value(self.quantize_value(x, channel), channel)
    }
}

/// `x.round_ties_even()`, without the library call it compiles to on x86-64 without SSE4.1
/// (`rintf`: a tenth of `subq quantize`'s time went there). Below 2^22 in magnitude, adding and
/// subtracting 1.5·2^23 rounds to an integer in the current (ties-to-even) mode, exactly: the
/// sum lies in [2^23, 2^24), where the spacing of f32 is 1, and 1.5·2^23 is even. Larger
/// values are integers already or go to the library.
#[inline]
pub fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same integer as `f32::round_ties_even` wherever the result is used (`as i64`: the sign
    /// of a zero does not matter), over a sweep of all f32 bit patterns and every tie near zero.
    #[test]
    fn round_ties_even_matches_the_library() {
        let same = |x: f32| {
            let (a, b) = (round_ties_even(x), x.round_ties_even());
            a == b || (a.is_nan() && b.is_nan())
        };
        for bits in (0..=u32::MAX).step_by(251) {
            let x = f32::from_bits(bits);
            assert!(same(x), "{x:e} ({bits:#x}): {} vs {}", round_ties_even(x), x.round_ties_even());
        }
        for k in -70_000i32..70_000 {
            for x in [k as f32 + 0.5, k as f32 - 0.5, k as f32 + 0.499_999_97, k as f32 * 61.0 + 0.5] {
                assert!(same(x), "{x}");
            }
        }
        assert_eq!(round_ties_even(2.5), 2.0);
        assert_eq!(round_ties_even(-3.5), -4.0);
    }

    #[test]
    fn asymmetric_grid_contains_zero_and_ends() {
        let q = QParams::asymmetric(-1.0, 3.0, QuantRange::U8);
        assert_eq!(q.fake_quantize(0.0, 0), 0.0);
        assert!((q.fake_quantize(3.0, 0) - 3.0).abs() <= q.scale[0] / 2.0 + 1e-6);
        assert!((q.fake_quantize(-1.0, 0) + 1.0).abs() <= q.scale[0] / 2.0 + 1e-6);
        assert_eq!(q.quantize_value(100.0, 0), 255);
        assert_eq!(q.quantize_value(-100.0, 0), 0);
    }

    #[test]
    fn symmetric_int8_has_zero_zero_point() {
        let q = QParams::symmetric(2.54, QuantRange::I8Narrow);
        assert_eq!(q.zero_point[0], 0);
        assert_eq!(q.quantize_value(2.54, 0), 127);
        assert_eq!(q.quantize_value(-2.54, 0), -127);
    }

    #[test]
    fn channel_of_follows_the_axis() {
        let per_channel = QParams { scale: vec![1.0, 2.0, 3.0], zero_point: vec![0; 3], axis: Some(1), range: QuantRange::I8 };
        // shape [2, 3, 2]: elements 0,1 → channel 0; 2,3 → 1; 4,5 → 2; then again for the next row.
        let got: Vec<usize> = (0..12).map(|i| per_channel.channel_of(&[2, 3, 2], i)).collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
        assert_eq!(QParams::per_tensor(1.0, 0, QuantRange::U8).channel_of(&[2, 3, 2], 7), 0);
    }

    #[test]
    fn quantize_rounds_half_to_even() {
        let q = QParams::per_tensor(1.0, 0, QuantRange::I8);
        assert_eq!(q.quantize_value(0.5, 0), 0);
        assert_eq!(q.quantize_value(1.5, 0), 2);
        assert_eq!(q.quantize_value(-0.5, 0), 0);
    }
}
