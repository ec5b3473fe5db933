use adgate_sim::artwork::{Artwork, ImageFormat};
use std::time::Instant;
#[test]
fn scratch() {
    for (f, w, h) in [(ImageFormat::Png, 3840, 3840), (ImageFormat::Jpeg, 1200, 630), (ImageFormat::Webp, 1200, 630), (ImageFormat::Jpeg, 3840, 3840)] {
        let a = Artwork::new(f, w, h);
        let t = Instant::now();
        let b = a.render("first").unwrap();
        let first = t.elapsed();
        let t = Instant::now();
        let c = a.render("second").unwrap();
        let second = t.elapsed();
        std::fs::write(format!("/tmp/simscratch/{f:?}.bin"), &c).unwrap();
        eprintln!("{f:?} {w}x{h}: first {first:?} next {second:?} size {} {}", b.len(), c.len());
    }
}
