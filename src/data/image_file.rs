//! One image file, decoded by its content (the extension is not trusted: a PNG named .jpg
//! is read as a PNG), converted to RGB (grey replicated, alpha dropped, as PIL's
//! `convert("RGB")`) and resized to S_h x S_w planes. The ImageFolder loader and `vitk predict`
//! both read images here, so that training, evaluation and prediction see the same pixels.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::{resize, DataError};
use crate::model::ImageSize;

/// Decodes the image at `path` into `out`, [3, S_h, S_w] bytes.
pub fn decode_into(path: &Path, size: ImageSize, out: &mut [u8]) -> Result<(), DataError> {
    let bad = |reason: String| DataError::BadImage {
        path: path.into(),
        reason,
    };
    // Not `ImageReader::open`, which starts from the extension's format and keeps it when
    // the content matches no signature: the format comes from the bytes alone.
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = image::ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad(
            "not an image: its content is none of PNG, JPEG, BMP, GIF, TIFF or WebP".into(),
        ));
    }
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!(
            "image is {}x{} (expected at least 1x1)",
            img.width(),
            img.height()
        )));
    }
    resize::rgb_to_planes(&img.to_rgb8(), size, out);
    Ok(())
}

/// The image at `path` as [3, S_h, S_w] bytes.
pub fn read_image(path: &Path, size: impl Into<ImageSize>) -> Result<Vec<u8>, DataError> {
    let size = size.into();
    let mut out = vec![0u8; 3 * size.pixels()];
    decode_into(path, size, &mut out)?;
    Ok(out)
}
