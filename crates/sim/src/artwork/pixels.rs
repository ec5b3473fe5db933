//! What the simulators' images show: an ad-like layout of palette indices, palettes derived
//! from a label, and the label as it is written into a file's metadata.

/// The palette of every JPEG, WebP and PDF, which cannot vary colours per label for free.
pub(super) const SHARED_PALETTE: &str = "adgate-sim";

/// Palette indices of an ad-like picture: a diagonal gradient background (0–191), a headline
/// band (192–223) and a grained "product photo" square (224–255) whose 2×2 blocks are
/// pseudo-random, so the compressed file has a realistic size instead of collapsing to a few KB.
pub(super) fn layout(width: u32, height: u32) -> Vec<u8> {
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
pub(super) fn palette(seed: &str) -> Vec<u8> {
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

pub(super) fn to_rgb(indices: &[u8], palette: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(indices.len() * 3);
    for &i in indices {
        let at = usize::from(i) * 3;
        rgb.extend_from_slice(&palette[at..at + 3]);
    }
    rgb
}

pub(super) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The label as it goes into a file: printable ASCII only (PNG `tEXt` is Latin-1, XMP is XML),
/// bounded, and followed by a hash of the original so two labels never share metadata.
pub(super) fn metadata_text(label: &str) -> String {
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
