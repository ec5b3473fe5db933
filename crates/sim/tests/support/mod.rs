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
    } else {
        panic!(
            "not a PNG, JPEG or WebP: {:02x?}",
            &bytes[..bytes.len().min(16)]
        );
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
