//! The image files the simulators serve in place of the providers' CDNs: real PNG, JPEG, WebP
//! (and PDF) bytes at the size the resource reports, the same bytes every time for one label and
//! different bytes (different SHA-256) for two labels.
//!
//! Encoding a 4K image takes 0.2–0.4 s (PNG) to 2 s (JPEG) in a debug build, and tests
//! download hundreds of outputs, so the pixels of each (format, size, JPEG quality) are
//! encoded once per process and kept in a small cache; a request only splices its label into
//! the shared encoding:
//! - PNG: indexed colour. The pixel indices are shared; the palette (`PLTE`) and a `tEXt`
//!   chunk come from the label, so each output also *looks* different at no encoding cost.
//! - JPEG: the shared baseline scan, with the label in a `COM` segment after the JFIF header.
//! - WebP: the shared lossless `VP8L` bitstream (the only mode the pure-Rust encoder has, so a
//!   requested quality cannot change the bytes) in an extended `VP8X` container whose `XMP `
//!   chunk carries the label.
//! - PDF: one page showing the picture as a JPEG; the label titles the `/Info` object.
//!
//! Modules: [`pixels`] (what the pictures show, palettes, the label as metadata),
//! [`containers`] (each format's encoder and file assembly).

mod containers;
mod pixels;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use containers::Encoded;

/// A file format the simulators can produce for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    /// A one-page document showing the picture (Bannerbear's `pdf`).
    Pdf,
}

impl ImageFormat {
    /// The format a provider's format name or file extension asks for (`jpg` and `jpeg` alike).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Pdf => "application/pdf",
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

/// What to draw: format, size and (JPEG, PDF) quality. Build with [`Artwork::new`].
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

    /// JPEG quality 1–100 (clamped), also of a PDF's embedded JPEG. PNG and lossless WebP
    /// ignore it, so it does not split their cache entries.
    pub fn with_quality(mut self, quality: u8) -> Self {
        if matches!(self.format, ImageFormat::Jpeg | ImageFormat::Pdf) {
            self.quality = quality.clamp(1, 100);
        }
        self
    }

    /// The file for `label`: shared pixels (encoded on first use) plus the label's metadata.
    pub fn render(self, label: &str) -> Result<Vec<u8>, ArtworkError> {
        let encoded = cached(self)?;
        let text = pixels::metadata_text(label);
        Ok(encoded.file(self.width, self.height, label, &text))
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
    let indices = pixels::layout(w, h);
    // JPEG, WebP and PDF have no palette to vary per label: one fixed palette colours them.
    let rgb = || pixels::to_rgb(&indices, &pixels::palette(pixels::SHARED_PALETTE));
    match art.format {
        ImageFormat::Png => containers::encode_png(w, h, &indices),
        ImageFormat::Jpeg => containers::encode_jpeg(w, h, &rgb(), art.quality),
        ImageFormat::Webp => containers::encode_webp(w, h, &rgb()),
        ImageFormat::Pdf => containers::encode_pdf(w, h, &rgb(), art.quality),
    }
}

#[cfg(test)]
mod tests {
    use super::pixels::{metadata_text, palette};
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
