//! The media type of an output, read from its first bytes.
//!
//! Custody records what the bytes are, not what the URL's extension or the provider's
//! Content-Type claim: a provider (or its CDN) that serves PNG bytes under `.jpg`, or JPEG as
//! `application/octet-stream`, is recorded as what it really is.

/// Bytes needed to tell every type below apart.
pub const SNIFF_LEN: usize = 16;

/// The media type the bytes start with; `application/octet-stream` when none matches.
pub fn media_type(head: &[u8]) -> &'static str {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if head.starts_with(PNG) {
        return "image/png";
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return "image/jpeg";
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return "image/gif";
    }
    if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        return "image/webp";
    }
    if head.starts_with(b"%PDF-") {
        return "application/pdf";
    }
    // ISO-BMFF: a box size, `ftyp`, then the major brand.
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        match &head[8..12] {
            b"avif" | b"avis" => return "image/avif",
            b"heic" | b"heix" | b"mif1" => return "image/heic",
            b"isom" | b"mp41" | b"mp42" | b"iso2" | b"avc1" => return "video/mp4",
            b"qt  " => return "video/quicktime",
            _ => {}
        }
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return "video/webm";
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = text.trim_ascii_start();
    if text.starts_with(b"<svg") || text.starts_with(b"<?xml") {
        return "image/svg+xml";
    }
    "application/octet-stream"
}

#[cfg(test)]
mod tests {
    use super::media_type;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(media_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(media_type(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]), "image/jpeg");
        assert_eq!(media_type(b"RIFF\x24\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(media_type(b"GIF89a\x01\0"), "image/gif");
        assert_eq!(media_type(b"\0\0\0\x1cftypavif\0\0\0\0"), "image/avif");
        assert_eq!(media_type(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(media_type(b"\0\0\0\x18ftypmp42"), "video/mp4");
        assert_eq!(media_type(b"  <svg xmlns="), "image/svg+xml");
    }

    #[test]
    fn near_misses_are_not_taken_for_images() {
        // A RIFF that is not WebP (a WAV file), a truncated PNG signature, HTML, nothing.
        assert_eq!(
            media_type(b"RIFF\x24\0\0\0WAVEfmt "),
            "application/octet-stream"
        );
        assert_eq!(media_type(b"\x89PNG\r\n"), "application/octet-stream");
        assert_eq!(media_type(b"<!doctype html>"), "application/octet-stream");
        assert_eq!(media_type(b""), "application/octet-stream");
        assert_eq!(media_type(b"\0\0\0\x1cftyp"), "application/octet-stream");
    }
}
