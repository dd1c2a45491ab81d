//! Header measurement per format: nanoseconds per image, to keep `measure` from regressing.
//! Run: `cargo bench --bench measure`.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{Criterion, criterion_group, criterion_main};
use image::{ImageFormat, RgbImage};

fn encode(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn formats(c: &mut Criterion) {
    let mut group = c.benchmark_group("measure");
    for (name, format) in [
        ("jpeg", ImageFormat::Jpeg),
        ("png", ImageFormat::Png),
        ("gif", ImageFormat::Gif),
        ("webp", ImageFormat::WebP),
        ("bmp", ImageFormat::Bmp),
        ("tiff", ImageFormat::Tiff),
    ] {
        let bytes = encode(640, 480, format);
        group.bench_function(name, |b| {
            b.iter(|| retail_pulse::measure::measure(black_box(&bytes)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
