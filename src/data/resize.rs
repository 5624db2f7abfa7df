//! Resizing of planar images, shared by the CIFAR path (when a side other than 32 is
//! asked for) and the ImageFolder path.
//!
//! Filter: `image`'s Triangle filter, i.e. bilinear interpolation whose support widens
//! when downscaling (antialiased), close to torchvision's `Resize(antialias=True)`.

use image::{imageops, imageops::FilterType, GrayImage, RgbImage};
use rayon::prelude::*;

use super::Dataset;

pub(crate) const FILTER: FilterType = FilterType::Triangle;

/// Resizes an RGB image to `side` x `side` and writes it as [3, side, side] planes.
pub(crate) fn rgb_to_planes(img: &RgbImage, side: usize, out: &mut [u8]) {
    let resized;
    let img = if img.width() as usize == side && img.height() as usize == side {
        img
    } else {
        resized = imageops::resize(img, side as u32, side as u32, FILTER);
        &resized
    };
    let plane = side * side;
    for (i, px) in img.pixels().enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
}

/// Resizes one [C, S, S] image to [C, side, side]: RGB in one pass, else plane by plane.
fn resize_planes(src: &[u8], channels: usize, from: usize, side: usize, out: &mut [u8]) {
    let (pin, pout) = (from * from, side * side);
    if channels == 3 {
        let mut hwc = Vec::with_capacity(3 * pin);
        for i in 0..pin {
            hwc.extend_from_slice(&[src[i], src[pin + i], src[2 * pin + i]]);
        }
        // The buffer has exactly 3*from*from bytes, so construction cannot fail.
        let rgb = RgbImage::from_raw(from as u32, from as u32, hwc).expect("3*side*side bytes");
        rgb_to_planes(&rgb, side, out);
        return;
    }
    for c in 0..channels {
        let plane = &src[c * pin..(c + 1) * pin];
        // The buffer has exactly from*from bytes, so construction cannot fail.
        let gray = GrayImage::from_raw(from as u32, from as u32, plane.to_vec())
            .expect("plane has side*side bytes");
        let r = imageops::resize(&gray, side as u32, side as u32, FILTER);
        out[c * pout..(c + 1) * pout].copy_from_slice(r.as_raw());
    }
}

/// The same set with every image resized to `side` x `side` (in parallel).
pub(crate) fn resize_dataset(ds: &Dataset, side: usize) -> Dataset {
    if ds.side == side {
        return ds.clone();
    }
    let out_len = ds.channels * side * side;
    let mut images = vec![0u8; ds.len() * out_len];
    if out_len > 0 {
        images
            .par_chunks_mut(out_len)
            .enumerate()
            .for_each(|(i, dst)| resize_planes(ds.image(i), ds.channels, ds.side, side, dst));
    }
    Dataset {
        images,
        labels: ds.labels.clone(),
        classes: ds.classes.clone(),
        channels: ds.channels,
        side,
    }
}
