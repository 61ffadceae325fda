//! Weight and activation layouts of the SIMD kernels.
//!
//! GEMM (`acc[m×n] = A[m×k] · B[k×n]`, A = weights, B = activations) works on pairs of `k`:
//! `vpmaddwd` multiplies two i16 pairs and adds them into one i32 lane, exactly (|w|, |x| ≤ 255,
//! so a pair sum stays far inside i32 and no saturation can occur).
//!
//! * A is packed once per conv into blocks of [`MR`] rows: `[m/MR][k/2][MR][2]` i16, so one
//!   32-bit broadcast gives a row's `(w[2p], w[2p+1])`.
//! * B is packed per inference into panels of [`NR`] columns: `[n/NR][k/2][NR][2]` i16 holding
//!   `x − zp`, so one k-pair of a panel is two contiguous 256-bit loads.
//!
//! Everything is zero padded (a zero weight or a zero `x − zp` adds nothing), so the kernels run
//! on whole blocks and only the stores are clipped.

use crate::ConvGeometry;

/// Rows (output channels) of the GEMM micro-tile.
pub const MR: usize = 6;
/// Columns (output positions) of the GEMM micro-tile.
pub const NR: usize = 16;
/// Dense convs with at most this many output positions run as matrix–vector products.
pub const GEMV_MAX_N: usize = 4;

/// Weights of one conv part, re-laid out for the SIMD kernels.
#[derive(Clone, Debug, Default)]
pub enum PackedWeights {
    /// Geometry not handled by the SIMD kernels (they fall back to the reference).
    #[default]
    None,
    /// Per group: `ceil(m/MR)` blocks of `[ceil(k/2)][MR][2]` i16, zero padded. `m` output
    /// channels per group, `k` weights per output channel.
    Gemm { data: Vec<i16>, m: usize, k: usize, groups: usize },
    /// A dense conv with at most [`GEMV_MAX_N`] output positions (a fully connected layer),
    /// run as matrix–vector products: row `i` as bytes `u[i·k + p] = w[i][p] − off[i]` with
    /// `off[i]` the row minimum (half the bytes of i16: such layers are memory-bound).
    Gemv { u: Vec<u8>, off: Vec<i32>, m: usize, k: usize },
    /// Depthwise, per channel: `[kh][ceil(kw/2)]` i32 holding the i16 pair
    /// `(w[ky][2j], w[ky][2j+1])` (second half 0 past the last kernel column).
    /// `lanes`: the channel-vectorized form of small planes ([`super::dw512::pack`]; empty
    /// where that kernel does not apply).
    Depthwise { pairs: Vec<i32>, kh: usize, kw2: usize, lanes: Vec<i32> },
}

impl PackedWeights {
    /// Pack OIHW weights (`w − zw`, i16) for geometry `g`.
    pub fn new(weight: &[i16], g: &ConvGeometry) -> PackedWeights {
        if g.is_depthwise() {
            let [kh, kw] = g.kernel;
            let kw2 = kw.div_ceil(2);
            let mut pairs = Vec::with_capacity(g.out_c * kh * kw2);
            for c in 0..g.out_c {
                let w = &weight[c * kh * kw..(c + 1) * kh * kw];
                for ky in 0..kh {
                    for j in 0..kw2 {
                        let lo = w[ky * kw + 2 * j] as u16 as u32;
                        let hi = if 2 * j + 1 < kw { w[ky * kw + 2 * j + 1] as u16 as u32 } else { 0 };
                        pairs.push((lo | hi << 16) as i32);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            let lanes = if super::dw512::applies(g) { super::dw512::pack(weight, g) } else { Vec::new() };
            #[cfg(not(target_arch = "x86_64"))]
            let lanes = Vec::new();
            return PackedWeights::Depthwise { pairs, kh, kw2, lanes };
        }
        if g.group == 1 && g.out_h * g.out_w <= GEMV_MAX_N {
            if let Some(p) = PackedWeights::gemv(weight, g) {
                return p;
            }
        }
        PackedWeights::gemm(weight, g)
    }

    /// The [`PackedWeights::Gemv`] form (one group), or `None` when a row's values span more
    /// than 255 (not from 8-bit weights).
    pub fn gemv(weight: &[i16], g: &ConvGeometry) -> Option<PackedWeights> {
        let (m, k) = (g.out_c, g.weights_per_output());
        if g.group != 1 || k == 0 || weight.len() < m * k {
            return None;
        }
        let rows = || weight.chunks(k).take(m);
        let off: Vec<i32> = rows().map(|r| r.iter().map(|&w| w as i32).min().unwrap_or(0)).collect();
        if !rows().zip(&off).all(|(r, &o)| r.iter().all(|&w| w as i32 - o <= 255)) {
            return None;
        }
        let u = rows().zip(&off).flat_map(|(r, &o)| r.iter().map(move |&w| (w as i32 - o) as u8)).collect();
        Some(PackedWeights::Gemv { u, off, m, k })
    }

    /// The [`PackedWeights::Gemm`] form (any geometry that is not depthwise).
    pub fn gemm(weight: &[i16], g: &ConvGeometry) -> PackedWeights {
        let m = g.out_c / g.group;
        let k = g.weights_per_output();
        let groups = g.group;
        let (mb, kp) = (m.div_ceil(MR), k.div_ceil(2));
        let mut data = vec![0i16; groups * mb * kp * MR * 2];
        for grp in 0..groups {
            let a = &weight[grp * m * k..(grp + 1) * m * k];
            let dst = &mut data[grp * mb * kp * MR * 2..(grp + 1) * mb * kp * MR * 2];
            for i in 0..m {
                let (blk, r) = (i / MR, i % MR);
                for p in 0..k {
                    dst[((blk * kp + p / 2) * MR + r) * 2 + p % 2] = a[i * k + p];
                }
            }
        }
        PackedWeights::Gemm { data, m, k, groups }
    }
}

/// Pack `x − zp` of a uint8 `[k × n]` matrix (CHW activations of a pointwise conv) into `NR`-column
/// panels `[n/NR][k/2][NR][2]` (portable version; the AVX2 one is identical).
pub fn pack_b_u8(input: &[u8], zp: i32, k: usize, n: usize, dst: &mut Vec<i16>) {
    let (np, kp) = (n.div_ceil(NR), k.div_ceil(2));
    dst.clear();
    dst.resize(np * kp * NR * 2, 0);
    for p in 0..kp {
        for h in 0..2 {
            let row = 2 * p + h;
            if row >= k {
                continue;
            }
            let src = &input[row * n..(row + 1) * n];
            for (col, &x) in src.iter().enumerate() {
                dst[(((col / NR) * kp + p) * NR + col % NR) * 2 + h] = (x as i32 - zp) as i16;
            }
        }
    }
}

/// Pack an i16 `[k × n]` matrix (im2col columns) into `NR`-column panels `[n/NR][k/2][NR][2]`.
pub fn pack_b_i16(cols: &[i16], k: usize, n: usize, dst: &mut Vec<i16>) {
    let (np, kp) = (n.div_ceil(NR), k.div_ceil(2));
    dst.clear();
    dst.resize(np * kp * NR * 2, 0);
    for row in 0..k {
        let (p, h) = (row / 2, row % 2);
        for (col, &x) in cols[row * n..(row + 1) * n].iter().enumerate() {
            dst[(((col / NR) * kp + p) * NR + col % NR) * 2 + h] = x;
        }
    }
}

/// Smallest depth `k` (input channels) for which pointwise convs use the byte GEMM. It does
/// the same number of multiplies as the i16 GEMM (`vpmaddubsw` + `vpmaddwd` by 1 per 4 k
/// instead of 2 `vpmaddwd`; both run 2 per cycle on Zen 3) but reads half the weight and
/// activation bytes: measured per layer on EfficientNet-Lite0 and MobileNetV2 it is 10–30%
/// faster on the weight-heavy layers (k ≥ 112), about even at k = 80–96 and slower on the
/// early expand layers (k = 16–40: up to 35%).
pub const BYTE_GEMM_MIN_K: usize = 80;

/// [`BYTE_GEMM_MIN_K`] on a CPU with AVX-VNNI: one `vpdpbusd` does 32 exact u8·i8 products where
/// the i16 GEMM needs two instructions for 16. Below k ≈ 32 the tile's fixed costs (row init,
/// remainder, epilogue over few k-quads) still lose: the 1×1 convs of the per-tensor files took
/// (`subq bench --profile`, MobileNetV2 / EfficientNet-Lite0) 1.78 / — ms with 16,
/// 1.66 / 3.51 ms with 32, 1.66 / 3.51 ms with 48 and 1.74 / 3.89 ms with 80.
pub const BYTE_GEMM_MIN_K_VNNI: usize = 48;

/// [`BYTE_GEMM_MIN_K_VNNI`] with the 512-bit tiles (AVX-512F + AVX512-VNNI): two panels per
/// tile, the padded last panel in the tile instead of dot-product columns, and a one-vector
/// epilogue per row make the byte GEMM win down to the smallest pointwise depth of the bundled
/// models (MobileNetV2's 1×1 convs at 40×40 and 80×80, k = 16–32: 0.47 → 0.43 ms,
/// `subq bench --profile`).
pub const BYTE_GEMM_MIN_K_VNNI512: usize = 16;

/// Whether this CPU runs AVX-VNNI's `vpdpbusd` on ymm registers (checked once). Then the byte GEMM
/// multiplies any i8 weight exactly (no i16 pair sum to saturate) and [`Packed8::new`] packs for it.
/// `SUBQ_SIMD=avx2` (or `portable`) turns it off, to compare.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            crate::simd_cap() >= crate::SimdCap::AvxVnni && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("avxvnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the VNNI byte GEMM may use 512-bit `vpdpbusd` (AVX-512F/BW/VL + AVX512-VNNI; checked
/// once; BW and VL for byte-masked stores):
/// one instruction per row and k-quad covers the panel's 16 columns, where the 256-bit form needs
/// two. Same packed form as [`vnni_available`]. `SUBQ_SIMD=avxvnni` keeps the 256-bit form.
pub fn vnni512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static V512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *V512.get_or_init(|| {
            crate::simd_cap() >= crate::SimdCap::Avx512 && vnni_available() && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the byte GEMM may use Intel AMX tiles (AMX-TILE + AMX-INT8, checked once, on top of
/// [`vnni512_available`], whose epilogue it shares): `tdpbsud` multiplies a 16 × 64 tile of i8
/// weights by 64 k of 16 columns, 16384 exact products per instruction where a 512-bit
/// `vpdpbusd` does 64. Linux hands out the tile state only on request (`arch_prctl`), made here
/// once for the process. `SUBQ_SIMD=avx512` keeps the `vpdpbusd` tiles.
pub fn amx_available() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMX.get_or_init(|| {
            // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8 (`is_x86_feature_detected!`
            // does not name them on stable Rust).
            let cpu = crate::simd_cap() == crate::SimdCap::Best && vnni512_available() && std::arch::x86_64::__cpuid_count(7, 0).edx & (3 << 24) == 3 << 24;
            // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: 0 once the kernel has granted it.
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            cpu && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
        })
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        false
    }
}

/// Smallest depth `k` for which pointwise convs take the byte GEMM on this CPU.
pub fn byte_gemm_min_k() -> usize {
    if vnni512_available() { BYTE_GEMM_MIN_K_VNNI512 } else if vnni_available() { BYTE_GEMM_MIN_K_VNNI } else { BYTE_GEMM_MIN_K }
}

/// Rows of the byte GEMM's micro-tile ([`Packed8`]).
pub const MR8: usize = 6;
/// Largest `|c0| + |c1|` of a weight pair that `vpmaddubsw` multiplies (the bytes `2j, 2j+1` of
/// a k-quad): a pair sum `x0·c0 + x1·c1` is then at most 255 · 128 = 32640, inside i16, so the
/// instruction never saturates.
pub const W8_PAIR_MAX: i32 = 128;

/// The part of a weight pair `(d0, d1)` that the byte GEMM multiplies: both as they are when
/// `|d0| + |d1| ≤ 128` (and each fits i8), else the smaller one kept (clamped to i8) and the
/// larger clamped to what is left of the 128. Per-tensor weights after equalization often pair a
/// large value with a small one; a fixed clamp at ±64 sent all such large values to the
/// remainder.
pub fn byte_pair(d0: i32, d1: i32) -> (i32, i32) {
    let (small_first, small, big) = if d0.abs() <= d1.abs() { (true, d0, d1) } else { (false, d1, d0) };
    let cs = small.clamp(-W8_PAIR_MAX, W8_PAIR_MAX - 1);
    let room = W8_PAIR_MAX - cs.abs();
    let cb = big.clamp(-room, room.min(W8_PAIR_MAX - 1));
    if small_first { (cs, cb) } else { (cb, cs) }
}

/// Weights of a pointwise conv for the byte GEMM (`vpmaddubsw`, or `vpdpbusd` with VNNI, on
/// uint8 activations `x`): `d = w − zw` is split into `c` (packed as i8) and a sparse remainder
/// `d − c`, and `Σ d·(x − zx) = Σ c·x + Σ (d − c)·x − zx·Σ d` exactly. Without VNNI each k-pair of
/// `c` stays within [`W8_PAIR_MAX`] (see [`byte_pair`]); with it, `c` is just `d` clamped to i8.
#[derive(Clone, Debug, Default)]
pub struct Packed8 {
    /// `ceil(m/MR8)` blocks of `[ceil(k/4)][MR8][4]` i8 (`c`), zero padded.
    pub a: Vec<i8>,
    pub m: usize,
    pub k: usize,
    /// Per row: `Σ_k d`.
    pub rowsum: Vec<i32>,
    /// Per row `i`, its remainder entries are `rem[rem_start[i]..rem_start[i + 1]]`.
    pub rem_start: Vec<u32>,
    /// Remainder entries: (k index, `d − c`).
    pub rem: Vec<(u32, i32)>,
    /// Packed for `vpdpbusd` (i8 values, no pair limit): only the VNNI kernels may read it.
    pub vnni: bool,
    /// The same `c` as AMX tiles where this CPU has them ([`super::amx_available`]), else
    /// empty: `ceil(m/16)` blocks of `ceil(k/64)` tiles of 16 rows × 64 bytes, zero padded.
    pub tiles: Vec<i8>,
}

impl Packed8 {
    /// The byte form of `m × k` row-major weights `d` (`None` if a value is outside
    /// [−255, 255] or more than 1 in 32 values need the remainder: then the i16 GEMM is faster).
    pub fn new(weight: &[i16], m: usize, k: usize) -> Option<Packed8> {
        Packed8::with_form(weight, m, k, vnni_available())
    }

    /// [`Packed8::new`] for the VNNI kernels (`vnni`) or the `vpmaddubsw` ones, whatever the CPU.
    pub fn with_form(weight: &[i16], m: usize, k: usize, vnni: bool) -> Option<Packed8> {
        if k == 0 || m == 0 || weight.len() < m * k || weight[..m * k].iter().any(|&d| !(-255..=255).contains(&d)) {
            return None;
        }
        let (mb, kq) = (m.div_ceil(MR8), k.div_ceil(4));
        let mut a = vec![0i8; mb * kq * MR8 * 4];
        let mut rowsum = Vec::with_capacity(m);
        let mut rem_start = vec![0u32];
        let mut rem = Vec::new();
        for i in 0..m {
            let (blk, r) = (i / MR8, i % MR8);
            let row = &weight[i * k..(i + 1) * k];
            rowsum.push(row.iter().map(|&d| d as i32).sum());
            for p in (0..k).step_by(2) {
                let (d0, d1) = (row[p] as i32, row.get(p + 1).map_or(0, |&d| d as i32));
                let (c0, c1) = if vnni { (d0.clamp(-128, 127), d1.clamp(-128, 127)) } else { byte_pair(d0, d1) };
                for (q, c, d) in [(p, c0, d0), (p + 1, c1, d1)] {
                    if q >= k {
                        continue;
                    }
                    a[((blk * kq + q / 4) * MR8 + r) * 4 + q % 4] = c as i8;
                    if c != d {
                        rem.push((q as u32, d - c));
                    }
                }
            }
            rem_start.push(rem.len() as u32);
        }
        let tiles = if vnni && k >= AMX_MIN_K && super::amx_available() { tiles_of(&a, m, k) } else { Vec::new() };
        (rem.len() * 32 <= m * k).then_some(Packed8 { a, m, k, rowsum, rem_start, rem, vnni, tiles })
    }
}

/// The AMX tile form of the packed `c` of [`Packed8::a`] (`[m/MR8][k/4][MR8][4]`): per block of
/// [`TILE_ROWS`] rows, `ceil(k/TILE_K)` tiles of `TILE_ROWS × TILE_K` bytes, row-major, zero
/// padded (a zero weight cancels whatever the activation tile holds past `k`).
fn tiles_of(a: &[i8], m: usize, k: usize) -> Vec<i8> {
    let (kq, kt) = (k.div_ceil(4), k.div_ceil(TILE_K));
    let mut t = vec![0i8; m.div_ceil(TILE_ROWS) * kt * TILE_ROWS * TILE_K];
    for i in 0..m {
        for p in 0..k {
            let c = a[(((i / MR8) * kq + p / 4) * MR8 + i % MR8) * 4 + p % 4];
            t[(((i / TILE_ROWS) * kt + p / TILE_K) * TILE_ROWS + i % TILE_ROWS) * TILE_K + p % TILE_K] = c;
        }
    }
    t
}

/// Smallest depth `k` for which the byte GEMM runs on AMX tiles. Below it a block's tile
/// loads, products and stores take longer than the `vpdpbusd` tile's whole work, which the
/// epilogue (the same in both) cannot hide. Measured per layer on EfficientNet-Lite0's
/// per-tensor file (`subq bench --profile`, 1 thread, µs, 512-bit vs AMX): k = 16: 236 vs 289,
/// 24: 85 vs 95, 32: 90 vs 94; k = 40: 50 vs 40, 80: 43 vs 31, 96: 73 vs 68; from k = 112
/// 1.2–2× faster (e.g. 1152 → 320: 96 vs 60).
pub const AMX_MIN_K: usize = 40;

/// Weight rows of an AMX tile (the most a tile holds).
pub const TILE_ROWS: usize = 16;
/// Bytes of `k` per row of an AMX weight tile (16 k-quads, the most a tile row holds).
pub const TILE_K: usize = 64;
/// Zeroed bytes after the last panel of [`pack_b8`]: an AMX activation tile always reads 16
/// k-quads (1 KiB), and where `k` ends inside the last tile, it reads past the panel (into the
/// next panel, or into this slack after the last one; zero weights cancel those bytes).
pub const PANEL_SLACK: usize = TILE_ROWS * TILE_K;

/// Pack a uint8 `[k × n]` matrix into `NR`-column panels `[n/NR][k/4][NR][4]` bytes (zero
/// padded, then [`PANEL_SLACK`] zeros) for the byte GEMM (portable version; the AVX2 one is
/// identical).
pub fn pack_b8(input: &[u8], k: usize, n: usize, dst: &mut Vec<u8>) {
    let (np, kq) = (n.div_ceil(NR), k.div_ceil(4));
    dst.clear();
    dst.resize(np * kq * NR * 4 + PANEL_SLACK, 0);
    for row in 0..k {
        for (col, &x) in input[row * n..(row + 1) * n].iter().enumerate() {
            dst[(((col / NR) * kq + row / 4) * NR + col % NR) * 4 + row % 4] = x;
        }
    }
}

#[cfg(test)]
mod byte_pair_tests {
    use super::*;

    /// Every pair of 8-bit weight differences: the multiplied part can never saturate
    /// `vpmaddubsw`, fits i8, is the whole pair when it can be, and leaves at most one value to the
    /// remainder whenever one of the two fits i8 on its own.
    #[test]
    fn byte_pair_never_saturates_and_keeps_what_fits() {
        for d0 in -255..=255 {
            for d1 in -255..=255 {
                let (c0, c1) = byte_pair(d0, d1);
                assert!(c0.abs() + c1.abs() <= W8_PAIR_MAX, "({d0}, {d1}) → ({c0}, {c1})");
                assert!((-128..=127).contains(&c0) && (-128..=127).contains(&c1), "({d0}, {d1}) → ({c0}, {c1})");
                assert!(c0 == 0 || c0.signum() == d0.signum() && c0.abs() <= d0.abs(), "({d0}, {d1}) → ({c0}, {c1})");
                assert!(c1 == 0 || c1.signum() == d1.signum() && c1.abs() <= d1.abs(), "({d0}, {d1}) → ({c0}, {c1})");
                let fits = |d: i32| (-128..=127).contains(&d);
                if d0.abs() + d1.abs() <= W8_PAIR_MAX && fits(d0) && fits(d1) {
                    assert_eq!((c0, c1), (d0, d1));
                }
                if fits(d0.abs().min(d1.abs())) {
                    assert!(c0 == d0 || c1 == d1, "({d0}, {d1}) → ({c0}, {c1}): both to the remainder");
                }
            }
        }
    }
}
