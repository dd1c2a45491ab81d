//! Bytes → (width, height), from the image header alone: no pixel is decoded, so a
//! 20000×20000 PNG of a few kilobytes costs what a thumbnail does. Formats: JPEG (incl.
//! progressive and CMYK), PNG, GIF, WebP (incl. animated), BMP, TIFF, AVIF, HEIC and the
//! others `imagesize` reads. EXIF rotation is ignored: it cannot change a perimeter.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub width: u64,
    pub height: u64,
}

impl Dimensions {
    pub fn perimeter(&self) -> u64 {
        2 * (self.width + self.height)
    }
}

/// The largest side any supported format can hold (PNG's limit, 2^31 - 1).
const MAX_SIDE: u64 = i32::MAX as u64;

/// A 32-bit two's-complement value read as unsigned, back to its magnitude.
fn signed_magnitude(value: u64) -> u64 {
    if value > MAX_SIDE && value <= u64::from(u32::MAX) {
        u64::from((value as u32 as i32).unsigned_abs())
    } else {
        value
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MeasureError {
    #[error("not an image: empty body")]
    Empty,
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("corrupt or truncated {0} header")]
    Corrupt(String),
    #[error("image reports a zero dimension ({width}x{height})")]
    ZeroSize { width: u64, height: u64 },
    #[error("not an image: its header claims an impossible size ({width}x{height})")]
    Implausible { width: u64, height: u64 },
}

pub fn measure(bytes: &[u8]) -> Result<Dimensions, MeasureError> {
    if bytes.is_empty() {
        return Err(MeasureError::Empty);
    }
    let format =
        imagesize::image_type(bytes).map_err(|_| MeasureError::NotAnImage(describe(bytes)))?;
    let size = imagesize::blob_size(bytes)
        .map_err(|_| MeasureError::Corrupt(format!("{format:?}").to_ascii_uppercase()))?;
    let (mut width, mut height) = (size.width as u64, size.height as u64);
    if matches!(format, imagesize::ImageType::Bmp) {
        // A BMP stores signed dimensions; a negative height means rows stored top-down, and
        // the reader hands it back as a huge unsigned number. The size is its magnitude.
        width = signed_magnitude(width);
        height = signed_magnitude(height);
    }
    if width == 0 || height == 0 {
        return Err(MeasureError::ZeroSize { width, height });
    }
    // No format this service reads can describe more than 2^31 - 1 pixels on a side; a header
    // that claims it is corrupt.
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(MeasureError::Implausible { width, height });
    }
    Ok(Dimensions { width, height })
}

/// True once `prefix` holds all a measurement will ever need: the size can be read, or the
/// bytes are of no known image format (the first 512 describe them). A download stops keeping
/// bytes at that point. (A TIFF whose directory sits at the end needs the whole file.)
pub fn is_readable(prefix: &[u8]) -> bool {
    match measure(prefix) {
        // A size was read, even an unusable one: more bytes cannot change it.
        Ok(_) | Err(MeasureError::ZeroSize { .. } | MeasureError::Implausible { .. }) => true,
        Err(MeasureError::NotAnImage(_)) => prefix.len() >= 512,
        Err(_) => false,
    }
}

/// What bytes that are not an image look like, for the stored error message.
fn describe(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.contains("<body")
    {
        "looks like HTML".into()
    } else if lower.starts_with("<?xml") || lower.starts_with("<svg") {
        if lower.contains("<svg") {
            "looks like SVG (vector images have no pixel size)".into()
        } else {
            "looks like XML".into()
        }
    } else if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "looks like JSON".into()
    } else if std::str::from_utf8(head).is_ok()
        && head
            .iter()
            .all(|b| !b.is_ascii_control() || b.is_ascii_whitespace())
    {
        "looks like plain text".into()
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("unrecognised format (first bytes {})", hex.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid PNG header claiming the given size (no pixel data follows).
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn perimeter_is_twice_width_plus_height() {
        assert_eq!(
            Dimensions {
                width: 550,
                height: 368
            }
            .perimeter(),
            1836
        );
    }

    #[test]
    fn huge_png_is_measured_from_its_header() {
        let d = measure(&png_header(20_000, 20_000)).unwrap();
        assert_eq!(
            d,
            Dimensions {
                width: 20_000,
                height: 20_000
            }
        );
    }

    #[test]
    fn non_images_say_what_they_look_like() {
        assert_eq!(measure(b""), Err(MeasureError::Empty));
        let html = measure(b"  <!DOCTYPE html><html><body>oops</body></html>").unwrap_err();
        assert_eq!(html.to_string(), "not an image: looks like HTML");
        assert_eq!(
            measure(b"{\"error\": 1}").unwrap_err().to_string(),
            "not an image: looks like JSON"
        );
        assert_eq!(
            measure(b"hello world").unwrap_err().to_string(),
            "not an image: looks like plain text"
        );
        assert!(
            measure(&[0, 1, 2, 3, 4, 5, 6, 7, 8])
                .unwrap_err()
                .to_string()
                .contains("unrecognised")
        );
    }

    #[test]
    fn truncated_header_is_corrupt() {
        let header = png_header(10, 10);
        let err = measure(&header[..14]).unwrap_err();
        assert!(matches!(err, MeasureError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn a_prefix_is_enough_once_the_header_is_in() {
        let header = png_header(10, 10);
        assert!(!is_readable(&header[..14]));
        assert!(is_readable(&header));
        assert!(
            !is_readable(b"<html>"),
            "a short non-image may still be described better"
        );
        assert!(is_readable(&[b'x'; 600]));
    }

    /// A BITMAPINFOHEADER BMP header (no pixels) with signed dimensions.
    fn bmp_header(width: i32, height: i32) -> Vec<u8> {
        let mut v = b"BM".to_vec();
        v.extend_from_slice(&[0; 12]); // file size, reserved, pixel offset
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&width.to_le_bytes());
        v.extend_from_slice(&height.to_le_bytes());
        v.extend_from_slice(&[1, 0, 24, 0]);
        v.extend_from_slice(&[0; 24]);
        v
    }

    #[test]
    fn a_top_down_bmp_has_a_positive_height() {
        assert_eq!(
            measure(&bmp_header(10, 20)).unwrap(),
            Dimensions {
                width: 10,
                height: 20
            }
        );
        assert_eq!(
            measure(&bmp_header(10, -20)).unwrap(),
            Dimensions {
                width: 10,
                height: 20
            }
        );
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let err = measure(&png_header(u32::MAX, u32::MAX)).unwrap_err();
        assert!(matches!(err, MeasureError::Implausible { .. }), "{err:?}");
        assert!(measure(&png_header(i32::MAX as u32, 1)).is_ok());
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(matches!(
            measure(&png_header(0, 5)),
            Err(MeasureError::ZeroSize { .. })
        ));
    }
}
