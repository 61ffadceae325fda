//! Image → normalized f32 CHW tensor, matching the Pillow pipelines that the
//! reference tensors in `assets/reference/` were made with.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CalibError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Resize the shorter side to `round(size / crop_ratio)`, keeping the
    /// aspect ratio, then take the centre `height × width` window.
    Crop,
    /// Resize straight to `height × width`, ignoring the aspect ratio.
    Stretch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub resize_mode: ResizeMode,
    /// Only used by [`ResizeMode::Crop`]; must be in (0, 1].
    pub crop_ratio: f32,
    /// In 0..255 pixel units, indexed by output channel.
    pub mean: [f32; 3],
    /// In 0..255 pixel units, indexed by output channel: `out = (pixel - mean) / std`.
    pub std: [f32; 3],
    pub channel_order: ChannelOrder,
}

impl Preprocess {
    pub const PRESETS: &'static [&'static str] =
        &["efficientnet-lite", "keras-mobilenet", "torchvision"];

    pub fn preset(name: &str) -> Result<Preprocess, CalibError> {
        let p = match name {
            // TF EfficientNet-Lite eval pipeline: 0.875 centre crop, (x - 127) / 128.
            "efficientnet-lite" => Preprocess {
                resize_mode: ResizeMode::Crop,
                crop_ratio: 0.875,
                mean: [127.0; 3],
                std: [128.0; 3],
                channel_order: ChannelOrder::Rgb,
            },
            // keras.applications.mobilenet_v2.preprocess_input: x / 127.5 - 1.
            "keras-mobilenet" => Preprocess {
                resize_mode: ResizeMode::Stretch,
                crop_ratio: 1.0,
                mean: [127.5; 3],
                std: [127.5; 3],
                channel_order: ChannelOrder::Rgb,
            },
            // torchvision ImageNet statistics, scaled to 0..255 pixel units.
            "torchvision" => Preprocess {
                resize_mode: ResizeMode::Crop,
                crop_ratio: 0.875,
                mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
                std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
                channel_order: ChannelOrder::Rgb,
            },
            _ => {
                return Err(CalibError::UnknownPreset {
                    name: name.to_string(),
                })
            }
        };
        Ok(p)
    }

    /// Decode the image file and produce a `3 × height × width` CHW tensor.
    pub fn load(&self, path: &Path, height: usize, width: usize) -> Result<Vec<f32>, CalibError> {
        let img = decode_rgb(path)?;
        if img.width() == 0 || img.height() == 0 {
            return Err(CalibError::Image {
                path: path.to_path_buf(),
                reason: "image has zero width or height".into(),
            });
        }
        self.apply(&img, height, width)
    }

    /// Resize/crop/normalize an already decoded image into a `3 × height × width`
    /// CHW tensor. Fails with [`CalibError::InvalidConfig`] on an empty image, a
    /// zero output size, a zero/non-finite std or a crop_ratio outside (0, 1].
    pub fn apply(
        &self,
        img: &image::RgbImage,
        height: usize,
        width: usize,
    ) -> Result<Vec<f32>, CalibError> {
        let invalid = |reason: String| CalibError::InvalidConfig { reason };
        let (iw, ih) = img.dimensions();
        if iw == 0 || ih == 0 {
            return Err(invalid(format!("image is empty ({iw}×{ih})")));
        }
        let (tw, th) = match (u32::try_from(width), u32::try_from(height)) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
            _ => return Err(invalid(format!("invalid output size {height}×{width}"))),
        };
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(invalid(format!(
                "std must be finite and non-zero, got {:?}",
                self.std
            )));
        }

        let (rw, rh, left, top) = match self.resize_mode {
            ResizeMode::Stretch => (tw, th, 0, 0),
            ResizeMode::Crop => {
                let r = self.crop_ratio;
                if !(r > 0.0 && r <= 1.0) {
                    return Err(invalid(format!("crop_ratio must be in (0, 1], got {r}")));
                }
                let (rw, rh) = crop_resize_dims(iw, ih, tw, th, r);
                let (left, top) = centre_offsets(rw, rh, tw, th);
                (rw, rh, left, top)
            }
        };

        let window = resize_window(img, rw, rh, left, top, tw, th);
        Ok(self.normalize(&window, tw as usize, th as usize))
    }

    /// Packed `tw × th` RGB → normalized CHW planes in the configured order.
    fn normalize(&self, rgb: &[u8], tw: usize, th: usize) -> Vec<f32> {
        let plane = tw * th;
        let mut out = vec![0f32; 3 * plane];
        let src_channel = match self.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        for (c, &sc) in src_channel.iter().enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
                *d = (px[sc] as f32 - mean) / std;
            }
        }
        out
    }
}

/// Decode any supported file to 8-bit RGB (grayscale, RGBA, 16-bit and CMYK
/// inputs are converted; alpha is dropped like Pillow's `convert("RGB")`).
pub fn decode_rgb(path: &Path) -> Result<image::RgbImage, CalibError> {
    let reader = image::ImageReader::open(path)
        .map_err(|source| CalibError::Io {
            path: path.to_path_buf(),
            source,
        })?
        // Sniff the content: files with a wrong extension are common in image sets.
        .with_guessed_format()
        .map_err(|source| CalibError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let img = reader.decode().map_err(|e| CalibError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// Size to resize to before the centre crop: the image's shorter side goes to
/// `round(short_target / ratio)`, the other side keeps the aspect ratio.
fn crop_resize_dims(iw: u32, ih: u32, tw: u32, th: u32, ratio: f32) -> (u32, u32) {
    let scale_to = |target: u32| ((target as f64 / ratio as f64).round() as u32).max(target);
    let proportional = |other: u32, new_short: u32, short: u32| {
        // Rounded, not floored: verified against the reference tensors
        // (e.g. 500×416 → 308×256, where floor gives 307 and misaligns the crop).
        (other as f64 * new_short as f64 / short as f64).round() as u32
    };
    let (rw, rh) = if iw <= ih {
        let nw = scale_to(tw);
        (nw, proportional(ih, nw, iw))
    } else {
        let nh = scale_to(th);
        (proportional(iw, nh, ih), nh)
    };
    // Non-square targets can need more than the aspect-preserving size on the
    // long side; stretch slightly rather than crop outside the image.
    (rw.max(tw), rh.max(th))
}

/// `(resized - target) // 2`: the references floor odd margins (e.g. 383 → 224
/// starts at 79, not 80), as Python's integer division does.
fn centre_offsets(rw: u32, rh: u32, tw: u32, th: u32) -> (u32, u32) {
    ((rw - tw) / 2, (rh - th) / 2)
}

/// A `tw × th` window at (`left`, `top`) of the image resized to `rw × rh`,
/// bit-exact with Pillow's `Image.resize((rw, rh), BILINEAR).crop(...)`
/// (libImaging/Resample.c): the filter support widens by the downscale factor
/// (antialiasing), taps are 22-bit fixed point, and the horizontal pass is
/// rounded to u8 before the vertical pass. Ported rather than using
/// fast_image_resize, whose i16 taps differ by one level on ~20% of values
/// against the Pillow references. Each output pixel depends only on its own
/// taps, so computing just the window gives the same values as resizing
/// everything and cropping, without allocating a huge intermediate for
/// extreme aspect ratios.
fn resize_window(
    img: &image::RgbImage,
    rw: u32,
    rh: u32,
    left: u32,
    top: u32,
    tw: u32,
    th: u32,
) -> Vec<u8> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (rw, rh, left, top, tw, th) = (
        rw as usize,
        rh as usize,
        left as usize,
        top as usize,
        tw as usize,
        th as usize,
    );
    let src = img.as_raw();
    let hcoef = (rw != iw).then(|| Taps::new(iw, rw, left..left + tw));
    let vcoef = (rh != ih).then(|| Taps::new(ih, rh, top..top + th));

    // Source rows the output window needs (all of them if there is no vertical pass).
    let (row0, row1) = match &vcoef {
        Some(v) => (v.bounds[0].0, v.bounds[th - 1].0 + v.bounds[th - 1].1),
        None => (top, top + th),
    };

    // Horizontal pass over those rows, output columns of the window only.
    let mut rows = vec![0u8; (row1 - row0) * tw * 3];
    for (ty, y) in (row0..row1).enumerate() {
        let src_row = &src[y * iw * 3..(y + 1) * iw * 3];
        let dst_row = &mut rows[ty * tw * 3..(ty + 1) * tw * 3];
        match &hcoef {
            Some(h) => {
                for x in 0..tw {
                    let (xmin, k) = h.get(x);
                    let mut ss = [HALF; 3];
                    for (i, &kv) in k.iter().enumerate() {
                        let p = &src_row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                        for c in 0..3 {
                            ss[c] += p[c] as i32 * kv;
                        }
                    }
                    for c in 0..3 {
                        dst_row[x * 3 + c] = clip8(ss[c]);
                    }
                }
            }
            None => dst_row.copy_from_slice(&src_row[left * 3..(left + tw) * 3]),
        }
    }
    let Some(v) = vcoef else {
        return rows;
    };

    let stride = tw * 3;
    let mut out = vec![0u8; th * stride];
    for (y, dst_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = v.get(y);
        for (x, d) in dst_row.iter_mut().enumerate() {
            let mut ss = HALF;
            for (i, &kv) in k.iter().enumerate() {
                ss += rows[(ymin - row0 + i) * stride + x] as i32 * kv;
            }
            *d = clip8(ss);
        }
    }
    out
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear
/// (triangle) filter, for the output indices in `range` of an
/// `in_size → out_size` resize.
struct Taps {
    /// Per output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point taps, `ksize` per output pixel.
    kk: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn new(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle filter's support is 1.0
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(range.len());
        let mut kk = vec![0i32; range.len() * ksize];
        let mut w = vec![0f64; ksize];
        for (j, xx) in range.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // `as usize` truncates and saturates negatives at 0, like Pillow's (int) cast + clamp.
            let xmin = (center - support + 0.5) as usize;
            let xmax = ((center + support + 0.5) as usize).min(in_size);
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut sum = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                let t = ((x + xmin) as f64 - center + 0.5) / filterscale;
                *wx = (1.0 - t.abs()).max(0.0);
                sum += *wx;
            }
            for x in 0..n {
                let k = if sum != 0.0 { w[x] / sum } else { w[x] };
                let f = k * (1u32 << PRECISION_BITS) as f64;
                kk[j * ksize + x] = if k < 0.0 {
                    (f - 0.5) as i32
                } else {
                    (f + 0.5) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Taps { bounds, kk, ksize }
    }

    /// First input index and taps of the `j`-th output pixel of the range.
    fn get(&self, j: usize) -> (usize, &[i32]) {
        let (xmin, n) = self.bounds[j];
        (xmin, &self.kk[j * self.ksize..j * self.ksize + n])
    }
}
