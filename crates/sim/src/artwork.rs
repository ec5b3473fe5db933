//! The image files the simulators serve in place of the providers' CDNs: real PNG, JPEG and
//! WebP bytes at the size the resource reports, the same bytes every time for one label and
//! different bytes (different SHA-256) for two labels.
//!
//! Encoding a 4K image takes seconds in a debug build, and tests download hundreds of outputs,
//! so the pixels of each (format, size, JPEG quality) are encoded once per process and kept in
//! a small cache; a request only splices its label into the shared encoding:
//! - PNG: indexed colour. The pixel indices are shared; the palette (`PLTE`) and a `tEXt`
//!   chunk come from the label, so each output also *looks* different at no encoding cost.
//! - JPEG: the shared baseline scan, with the label in a `COM` segment after the JFIF header.
//! - WebP: the shared lossless `VP8L` bitstream (the only mode the pure-Rust encoder has, so a
//!   requested quality cannot change the bytes) in an extended `VP8X` container whose `XMP `
//!   chunk carries the label.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A bitmap format the simulators can produce for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// The format a provider's format name or file extension asks for (`jpg` and `jpeg` alike).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// JPEG quality when the request names none. GUESS: none of the documents gives a default
/// for Bannerbear's `quality` or Abyssale's `file_compression_level`; Pictify's is 0.9.
pub const DEFAULT_QUALITY: u8 = 90;

/// Largest side served. WebP cannot exceed 16383 px; 8192 keeps memory bounded too.
pub const MAX_SIDE: u32 = 8192;
/// Largest pixel count served (a 4096×4096 square). Bannerbear accepts 5000 px × `scale` 4;
/// such requests get the largest image of the same aspect ratio within these bounds.
pub const MAX_PIXELS: u64 = 4096 * 4096;

/// Encodings kept per process. A test run uses a handful of (format, size, quality) triples;
/// the bound only stops a long-lived sandbox from growing without end.
const CACHE_ENTRIES: usize = 32;

/// What to draw: format, size and (JPEG only) quality. Build with [`Artwork::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Artwork {
    format: ImageFormat,
    width: u32,
    height: u32,
    quality: u8,
}

impl Artwork {
    /// `width`×`height` in `format`, shrunk (aspect kept) to [`MAX_SIDE`] / [`MAX_PIXELS`].
    pub fn new(format: ImageFormat, width: u32, height: u32) -> Self {
        let (width, height) = fit(width, height);
        Self {
            format,
            width,
            height,
            quality: DEFAULT_QUALITY,
        }
    }

    /// JPEG quality 1–100 (clamped). PNG and lossless WebP ignore it, so it does not split
    /// their cache entries.
    pub fn with_quality(mut self, quality: u8) -> Self {
        if self.format == ImageFormat::Jpeg {
            self.quality = quality.clamp(1, 100);
        }
        self
    }

    /// The file for `label`: shared pixels (encoded on first use) plus the label's metadata.
    pub fn render(self, label: &str) -> Result<Vec<u8>, ArtworkError> {
        let encoded = cached(self)?;
        let text = metadata_text(label);
        Ok(match &*encoded {
            Encoded::Png { ihdr, idat } => {
                let mut out = Vec::with_capacity(idat.len() + 2048);
                out.extend_from_slice(PNG_SIGNATURE);
                out.extend_from_slice(ihdr);
                png_chunk(&mut out, b"PLTE", &palette(label));
                let mut comment = b"Comment\0".to_vec();
                comment.extend_from_slice(text.as_bytes());
                png_chunk(&mut out, b"tEXt", &comment);
                out.extend_from_slice(idat);
                png_chunk(&mut out, b"IEND", &[]);
                out
            }
            Encoded::Jpeg { head, scan } => {
                let mut out = Vec::with_capacity(head.len() + scan.len() + text.len() + 4);
                out.extend_from_slice(head);
                out.extend_from_slice(&[0xFF, 0xFE]);
                // `metadata_text` is far below the segment limit (65533 bytes).
                out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(scan);
                out
            }
            Encoded::Webp { vp8l } => webp_container(self.width, self.height, vp8l, &text),
        })
    }

    /// An HTTP answer with the file and its Content-Type. The first request of a size encodes
    /// the pixels, which is CPU work: it runs off the async workers.
    pub async fn respond(self, label: String) -> Response {
        match tokio::task::spawn_blocking(move || self.render(&label)).await {
            Ok(Ok(bytes)) => {
                ([(header::CONTENT_TYPE, self.format.content_type())], bytes).into_response()
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "simulator could not encode an output");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "simulator output encoder stopped");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// An encoder failed (it should not for sizes within the bounds).
#[derive(Debug, Clone)]
pub struct ArtworkError(String);

impl fmt::Display for ArtworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "encoding a simulator image failed: {}", self.0)
    }
}

impl std::error::Error for ArtworkError {}

fn fit(width: u32, height: u32) -> (u32, u32) {
    let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
    let side = u64::from(MAX_SIDE);
    if w <= side && h <= side && w * h <= MAX_PIXELS {
        return (w as u32, h as u32);
    }
    let ratio = (side as f64 / w as f64)
        .min(side as f64 / h as f64)
        .min((MAX_PIXELS as f64 / (w * h) as f64).sqrt());
    let shrink = |n: u64| ((n as f64 * ratio).floor() as u32).clamp(1, MAX_SIDE);
    (shrink(w), shrink(h))
}

// ---------------------------------------------------------------------------------------------
// Cache

/// One format's shared encoding, split where the label goes in.
#[derive(Debug)]
enum Encoded {
    /// The whole `IHDR` chunk and every `IDAT` chunk, as written by the encoder.
    Png { ihdr: Vec<u8>, idat: Vec<u8> },
    /// Everything up to the end of the JFIF `APP0` segment, then the rest of the file.
    Jpeg { head: Vec<u8>, scan: Vec<u8> },
    /// The `VP8L` chunk (header, payload, padding).
    Webp { vp8l: Vec<u8> },
}

type Slot = Arc<OnceLock<Result<Arc<Encoded>, ArtworkError>>>;

#[derive(Default)]
struct Cache {
    slots: HashMap<Artwork, Slot>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<Artwork>,
}

fn cached(art: Artwork) -> Result<Arc<Encoded>, ArtworkError> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let slot = {
        let mut cache = crate::common::lock(CACHE.get_or_init(Default::default));
        match cache.slots.get(&art) {
            Some(slot) => Arc::clone(slot),
            None => {
                if cache.order.len() >= CACHE_ENTRIES
                    && let Some(oldest) = cache.order.pop_front()
                {
                    cache.slots.remove(&oldest);
                }
                let slot = Slot::default();
                cache.slots.insert(art, Arc::clone(&slot));
                cache.order.push_back(art);
                slot
            }
        }
    };
    // Outside the map lock: concurrent first requests of one size wait for a single encode,
    // other sizes are not held up.
    slot.get_or_init(|| encode(art).map(Arc::new)).clone()
}

fn encode(art: Artwork) -> Result<Encoded, ArtworkError> {
    let (w, h) = (art.width, art.height);
    let indices = layout(w, h);
    match art.format {
        ImageFormat::Png => encode_png(w, h, &indices),
        ImageFormat::Jpeg => {
            let rgb = to_rgb(&indices, &palette(SHARED_PALETTE));
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, art.quality)
                .encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| ArtworkError(e.to_string()))?;
            let split = jfif_header_end(&out)
                .ok_or_else(|| ArtworkError("the JPEG has no JFIF header".into()))?;
            let scan = out.split_off(split);
            Ok(Encoded::Jpeg { head: out, scan })
        }
        ImageFormat::Webp => {
            let rgb = to_rgb(&indices, &palette(SHARED_PALETTE));
            let mut out = Vec::new();
            image_webp::WebPEncoder::new(&mut out)
                .encode(&rgb, w, h, image_webp::ColorType::Rgb8)
                .map_err(|e| ArtworkError(e.to_string()))?;
            // A simple-format file: "RIFF" size "WEBP", then the one VP8L chunk.
            match out.get(12..16) {
                Some(b"VP8L") => Ok(Encoded::Webp {
                    vp8l: out.split_off(12),
                }),
                _ => Err(ArtworkError("the WebP encoder wrote no VP8L chunk".into())),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels

/// JPEG and WebP have no palette to vary per label: their colours come from this fixed name.
const SHARED_PALETTE: &str = "adgate-sim";

/// Palette indices of an ad-like picture: a diagonal gradient background (0–191), a headline
/// band (192–223) and a grained "product photo" square (224–255) whose 2×2 blocks are
/// pseudo-random, so the compressed file has a realistic size instead of collapsing to a few KB.
fn layout(width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let diagonal = (w + h).saturating_sub(2).max(1);
    let band = h * 62 / 100..h * 78 / 100;
    let side = w.min(h) / 3;
    let (left, top) = ((w - side) / 2, h / 8);
    let band_row: Vec<u8> = (0..w).map(|x| (192 + x * 31 / w.max(1)) as u8).collect();
    let mut px = vec![0u8; w * h];
    for (y, row) in px.chunks_exact_mut(w).enumerate() {
        if band.contains(&y) {
            row.copy_from_slice(&band_row);
            continue;
        }
        for (x, p) in row.iter_mut().enumerate() {
            *p = ((x + y) * 191 / diagonal) as u8;
        }
        if (top..top + side).contains(&y) {
            for (x, p) in row[left..left + side].iter_mut().enumerate() {
                *p = 224 | (grain(x / 2, y / 2) & 31);
            }
        }
    }
    px
}

fn grain(x: usize, y: usize) -> u8 {
    let mut v = (x as u64) << 32 | y as u64;
    v = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    v ^= v >> 29;
    v = v.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (v >> 56) as u8
}

/// 256 RGB entries derived from `seed`: the gradient from a light to a dark tone of one
/// colour, the band in its complement, the grain in warm-to-cool mixes of both.
fn palette(seed: &str) -> Vec<u8> {
    let h = fnv1a(seed);
    let base = [(h >> 16) as u8, (h >> 8) as u8, h as u8];
    let accent = base.map(|c| 255 - c);
    let mut out = Vec::with_capacity(768);
    for i in 0..256u32 {
        let colour = match i {
            0..=191 => base.map(|c| mix(c.saturating_add(60), c / 3, i, 191)),
            192..=223 => accent.map(|c| mix(c, c / 2, i - 192, 31)),
            _ => {
                let t = i - 224;
                [0, 1, 2].map(|k| mix(base[k], accent[k], t, 31))
            }
        };
        out.extend_from_slice(&colour);
    }
    out
}

/// `from` at step 0 to `to` at step `steps`.
fn mix(from: u8, to: u8, step: u32, steps: u32) -> u8 {
    let (a, b) = (from as i32, to as i32);
    (a + (b - a) * step as i32 / steps.max(1) as i32) as u8
}

fn to_rgb(indices: &[u8], palette: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(indices.len() * 3);
    for &i in indices {
        let at = usize::from(i) * 3;
        rgb.extend_from_slice(&palette[at..at + 3]);
    }
    rgb
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The label as it goes into a file: printable ASCII only (PNG `tEXt` is Latin-1, XMP is XML),
/// bounded, and followed by a hash of the original so two labels never share metadata.
fn metadata_text(label: &str) -> String {
    let safe: String = label
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-:/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("adgate-sim {safe} {:016x}", fnv1a(label))
}

// ---------------------------------------------------------------------------------------------
// Containers

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

fn encode_png(w: u32, h: u32, indices: &[u8]) -> Result<Encoded, ArtworkError> {
    let err = |e: png::EncodingError| ArtworkError(e.to_string());
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(palette(SHARED_PALETTE));
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(err)?;
        writer.write_image_data(indices).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    let (mut ihdr, mut idat) = (Vec::new(), Vec::new());
    let mut at = PNG_SIGNATURE.len();
    while let Some(len_bytes) = out.get(at..at + 4) {
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let end = at + 12 + len as usize;
        let chunk = out
            .get(at..end)
            .ok_or_else(|| ArtworkError("the PNG encoder wrote a truncated chunk".into()))?;
        match &chunk[4..8] {
            b"IHDR" => ihdr.extend_from_slice(chunk),
            b"IDAT" => idat.extend_from_slice(chunk),
            // PLTE is replaced per label, IEND written last.
            _ => {}
        }
        at = end;
    }
    if ihdr.is_empty() || idat.is_empty() {
        return Err(ArtworkError("the PNG encoder wrote no IHDR or IDAT".into()));
    }
    Ok(Encoded::Png { ihdr, idat })
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let crc_from = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[crc_from..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO-HDLC) as PNG chunks use it; per request it covers under a kilobyte.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (!(crc & 1)).wrapping_add(1);
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Where the JFIF `APP0` segment that follows `SOI` ends.
fn jfif_header_end(jpeg: &[u8]) -> Option<usize> {
    match jpeg.get(..6)? {
        [0xFF, 0xD8, 0xFF, 0xE0, hi, lo] => Some(4 + usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// An extended WebP file: `VP8X` (XMP flag, canvas size), the shared `VP8L` chunk, `XMP `.
fn webp_container(width: u32, height: u32, vp8l: &[u8], text: &str) -> Vec<u8> {
    let xmp = format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF \
         xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description \
         xmlns:dc=\"http://purl.org/dc/elements/1.1/\" dc:identifier=\"{text}\"/>\
         </rdf:RDF></x:xmpmeta>"
    );
    let xmp_padded = xmp.len() + xmp.len() % 2;
    let riff_size = 4 + (8 + 10) + vp8l.len() + (8 + xmp_padded);
    let mut out = Vec::with_capacity(8 + riff_size);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(riff_size as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(b"VP8X");
    out.extend_from_slice(&10u32.to_le_bytes());
    const XMP_FLAG: u8 = 0x04;
    out.extend_from_slice(&[XMP_FLAG, 0, 0, 0]);
    out.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    out.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    out.extend_from_slice(vp8l);
    out.extend_from_slice(b"XMP ");
    out.extend_from_slice(&(xmp.len() as u32).to_le_bytes());
    out.extend_from_slice(xmp.as_bytes());
    if xmp.len() % 2 == 1 {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_requests_keep_their_aspect_within_the_bounds() {
        assert_eq!(fit(1200, 630), (1200, 630));
        assert_eq!(fit(0, 0), (1, 1));
        let (w, h) = fit(20_000, 10_000);
        assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS && w <= MAX_SIDE);
        assert!((f64::from(w) / f64::from(h) - 2.0).abs() < 0.01, "{w}x{h}");
        let (w, h) = fit(20_000, 400);
        assert_eq!((w, h), (MAX_SIDE, 163));
    }

    #[test]
    fn quality_only_splits_jpeg_entries() {
        let png = Artwork::new(ImageFormat::Png, 10, 10);
        assert_eq!(png.with_quality(10), png);
        let jpeg = Artwork::new(ImageFormat::Jpeg, 10, 10);
        assert_ne!(jpeg.with_quality(10), jpeg);
        assert_eq!(jpeg.with_quality(0).quality, 1);
    }

    #[test]
    fn labels_change_the_palette_and_the_metadata() {
        assert_ne!(palette("a"), palette("b"));
        assert_eq!(palette("a").len(), 768);
        assert_ne!(metadata_text("a b"), metadata_text("a_b"));
        assert!(metadata_text("ü<\"x").is_ascii());
    }
}
