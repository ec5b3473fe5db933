//! Reading the simulators' output files independently of the code that wrote them: the format
//! from the magic number, the size from a full decode with the format's own decoder, so a file
//! that only starts right (or carries a broken metadata splice) fails.

#![allow(dead_code)] // each test crate uses part of it

use std::io::Cursor;

use sha2::{Digest, Sha256};

/// The served file's media type (from its first bytes) and decoded width × height.
pub fn decode(bytes: &[u8]) -> (&'static str, u32, u32) {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .expect("PNG header");
        let mut pixels = vec![0; reader.output_buffer_size().expect("PNG buffer size")];
        let frame = reader.next_frame(&mut pixels).expect("PNG pixel data");
        ("image/png", frame.width, frame.height)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        decoder.decode().expect("JPEG scan");
        let info = decoder.info().expect("JPEG frame header");
        assert_eq!(
            info.coding_process,
            jpeg_decoder::CodingProcess::DctSequential,
            "baseline (SOF0) JPEG"
        );
        ("image/jpeg", u32::from(info.width), u32::from(info.height))
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        assert_eq!(declared + 8, bytes.len(), "RIFF size covers the file");
        let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).expect("WebP header");
        let (w, h) = decoder.dimensions();
        let mut pixels = vec![0; decoder.output_buffer_size().expect("WebP buffer size")];
        decoder.read_image(&mut pixels).expect("WebP bitstream");
        ("image/webp", w, h)
    } else if bytes.starts_with(b"%PDF-") {
        let (w, h) = pdf_image_size(bytes);
        ("application/pdf", w, h)
    } else {
        panic!(
            "not a PNG, JPEG, WebP or PDF: {:02x?}",
            &bytes[..bytes.len().min(16)]
        );
    }
}

/// A PDF's structure checked the way a reader walks it — `startxref` to the xref table, each
/// entry to its `N 0 obj` — and the size of its one image, decoded from the JPEG it embeds.
fn pdf_image_size(bytes: &[u8]) -> (u32, u32) {
    let text = String::from_utf8_lossy(bytes);
    assert!(text.ends_with("%%EOF\n"), "PDF ends with %%EOF");
    let startxref = text.rfind("startxref\n").expect("startxref");
    let xref_at: usize = text[startxref + 10..]
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("startxref offset");
    let mut lines = bytes[xref_at..].split(|b| *b == b'\n');
    assert_eq!(lines.next(), Some(&b"xref"[..]));
    let count: usize = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.strip_prefix("0 "))
        .and_then(|n| n.parse().ok())
        .expect("xref subsection");
    assert!(
        lines.next().is_some_and(|l| l.ends_with(b" f ")),
        "free entry 0"
    );
    for number in 1..count {
        let entry = lines.next().expect("xref entry");
        let at: usize = std::str::from_utf8(&entry[..10])
            .ok()
            .and_then(|n| n.parse().ok())
            .expect("xref offset");
        let header = format!("{number} 0 obj");
        assert!(
            bytes[at..].starts_with(header.as_bytes()),
            "xref of object {number}"
        );
    }
    let find = |from: usize, needle: &[u8]| {
        bytes[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let image = find(0, b"/Subtype /Image").expect("an image XObject");
    let stream = find(image, b"stream\n").expect("image stream") + 7;
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&bytes[stream..]));
    decoder.decode().expect("the PDF's JPEG image");
    let info = decoder.info().expect("JPEG frame header");
    let dict = String::from_utf8_lossy(&bytes[image..stream]);
    let declared = |key: &str| -> u32 {
        let at = dict.find(key).expect(key) + key.len() + 1;
        dict[at..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect(key)
    };
    let size = (u32::from(info.width), u32::from(info.height));
    assert_eq!(
        (declared("/Width"), declared("/Height")),
        size,
        "the image dictionary names the JPEG's size"
    );
    size
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
