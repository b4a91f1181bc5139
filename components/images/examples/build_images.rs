//! Measures `build_images`: `cargo run --release -p kinit-images --example build_images -- BINARY OUT_DIR [gzip-level|none]`.
//! Prints one line per image (reference, digest, size) and the wall time.

use std::time::Instant;

use kinit_images::{build_images, BuildOptions, Compression};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: build_images BINARY OUT_DIR [gzip-level|none]";
    let binary = args.next().ok_or(usage)?;
    let out = args.next().ok_or(usage)?;
    let mut options = BuildOptions::new(&binary, &out);
    options.compression = match args.next().as_deref() {
        None => Compression::default(),
        Some("none") => Compression::None,
        Some(level) => Compression::Gzip(level.parse()?),
    };
    let started = Instant::now();
    let report = build_images(&options)?;
    let binary_size = std::fs::metadata(&binary)?.len();
    println!(
        "binary {binary}: {:.1} MiB, {} libraries, compression {:?}",
        binary_size as f64 / 1048576.0,
        report.libraries.len(),
        options.compression
    );
    for image in &report.images {
        println!(
            "{:<32} {} archive {:>7.1} MiB, unpacked {:>7.1} MiB",
            image.reference,
            &image.manifest_digest[..19],
            image.size as f64 / 1048576.0,
            image.unpacked_size as f64 / 1048576.0
        );
    }
    println!(
        "built {} images in {:.2}s",
        report.images.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
