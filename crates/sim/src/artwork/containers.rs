//! The file formats. Each encodes the shared pixels once into an [`Encoded`], split where a
//! label goes in, and [`Encoded::file`] assembles one label's file from it.

use super::ArtworkError;
use super::pixels::palette;

/// One format's shared encoding.
#[derive(Debug)]
pub(super) enum Encoded {
    /// The whole `IHDR` chunk and every `IDAT` chunk, as written by the encoder.
    Png { ihdr: Vec<u8>, idat: Vec<u8> },
    /// Everything up to the end of the JFIF `APP0` segment, then the rest of the file.
    Jpeg { head: Vec<u8>, scan: Vec<u8> },
    /// The `VP8L` chunk (header, payload, padding).
    Webp { vp8l: Vec<u8> },
    /// Header and objects 1–5 (catalog, pages, page, the JPEG image, the page's drawing) with
    /// their byte offsets; the label's `/Info` object, the xref table and trailer follow.
    Pdf {
        prefix: Vec<u8>,
        offsets: Vec<usize>,
    },
}

impl Encoded {
    /// The file for `label`, whose metadata form is `text` (see `pixels::metadata_text`).
    pub(super) fn file(&self, width: u32, height: u32, label: &str, text: &str) -> Vec<u8> {
        match self {
            Self::Png { ihdr, idat } => {
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
            Self::Jpeg { head, scan } => {
                let mut out = Vec::with_capacity(head.len() + scan.len() + text.len() + 4);
                out.extend_from_slice(head);
                out.extend_from_slice(&[0xFF, 0xFE]);
                // `metadata_text` is far below the segment limit (65533 bytes).
                out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(scan);
                out
            }
            Self::Webp { vp8l } => webp_container(width, height, vp8l, text),
            Self::Pdf { prefix, offsets } => pdf_tail(prefix, offsets, text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PNG

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Indexed colour, so the palette a file carries decides its colours.
pub(super) fn encode_png(w: u32, h: u32, indices: &[u8]) -> Result<Encoded, ArtworkError> {
    let err = |e: png::EncodingError| ArtworkError(e.to_string());
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(palette(super::pixels::SHARED_PALETTE));
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

// ---------------------------------------------------------------------------------------------
// JPEG

fn jpeg_bytes(w: u32, h: u32, rgb: &[u8], quality: u8) -> Result<Vec<u8>, ArtworkError> {
    let mut out = Vec::new();
    // Sides are at most `MAX_SIDE` (8192), within JPEG's 16 bits.
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| ArtworkError(e.to_string()))?;
    Ok(out)
}

/// Baseline JPEG, split after its JFIF header for the label's `COM` segment.
pub(super) fn encode_jpeg(
    w: u32,
    h: u32,
    rgb: &[u8],
    quality: u8,
) -> Result<Encoded, ArtworkError> {
    let mut head = jpeg_bytes(w, h, rgb, quality)?;
    let split = match head.get(..6) {
        Some([0xFF, 0xD8, 0xFF, 0xE0, hi, lo]) => 4 + usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(ArtworkError("the JPEG has no JFIF header".into())),
    };
    let scan = head.split_off(split);
    Ok(Encoded::Jpeg { head, scan })
}

// ---------------------------------------------------------------------------------------------
// WebP

pub(super) fn encode_webp(w: u32, h: u32, rgb: &[u8]) -> Result<Encoded, ArtworkError> {
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(rgb, w, h, image_webp::ColorType::Rgb8)
        .map_err(|e| ArtworkError(e.to_string()))?;
    // A simple-format file: "RIFF" size "WEBP", then the one VP8L chunk.
    match out.get(12..16) {
        Some(b"VP8L") => Ok(Encoded::Webp {
            vp8l: out.split_off(12),
        }),
        _ => Err(ArtworkError("the WebP encoder wrote no VP8L chunk".into())),
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

// ---------------------------------------------------------------------------------------------
// PDF

/// One page showing the picture as a JPEG (`DCTDecode`) image. The page measures the pixels at
/// 96 dpi, the resolution bannerbear.md gives for its PDFs (v2 "PDF opt-in (96 dpi)"; v5's
/// `dpi` is "metadata only").
pub(super) fn encode_pdf(w: u32, h: u32, rgb: &[u8], quality: u8) -> Result<Encoded, ArtworkError> {
    let jpeg = jpeg_bytes(w, h, rgb, quality)?;
    let (page_w, page_h) = (f64::from(w) * 0.75, f64::from(h) * 0.75);
    let drawing = format!("q {page_w} 0 0 {page_h} 0 0 cm /Im0 Do Q");
    // The binary comment line marks the file as binary for transfer tools.
    let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::new();
    let mut object = |out: &mut Vec<u8>, parts: &[&[u8]]| {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", offsets.len()).as_bytes());
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\nendobj\n");
    };
    object(&mut out, &[b"<< /Type /Catalog /Pages 2 0 R >>"]);
    object(&mut out, &[b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]);
    let page = format!(
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page_w} {page_h}] \
         /Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>"
    );
    object(&mut out, &[page.as_bytes()]);
    let image = format!(
        "<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceRGB \
         /BitsPerComponent 8 /Filter /DCTDecode /Length {} >>\nstream\n",
        jpeg.len()
    );
    object(&mut out, &[image.as_bytes(), &jpeg, b"\nendstream"]);
    let contents = format!("<< /Length {} >>\nstream\n", drawing.len());
    object(
        &mut out,
        &[contents.as_bytes(), drawing.as_bytes(), b"\nendstream"],
    );
    Ok(Encoded::Pdf {
        prefix: out,
        offsets,
    })
}

/// The shared objects, then object 6 (`/Info`, titled with the label), the xref table and
/// the trailer. `text` is printable ASCII without parentheses or backslashes, so it is a valid
/// PDF literal string as it is.
fn pdf_tail(prefix: &[u8], offsets: &[usize], text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 512);
    out.extend_from_slice(prefix);
    let info_at = out.len();
    let info_number = offsets.len() + 1;
    out.extend_from_slice(
        format!("{info_number} 0 obj\n<< /Title ({text}) /Producer (adgate-sim) >>\nendobj\n")
            .as_bytes(),
    );
    let xref_at = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", info_number + 1).as_bytes());
    for at in offsets.iter().chain([&info_at]) {
        out.extend_from_slice(format!("{at:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R /Info {info_number} 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
            info_number + 1
        )
        .as_bytes(),
    );
    out
}
