//! Resizing of planar images, shared by the CIFAR path (when a size other than 32x32 is
//! asked for) and the ImageFolder path.
//!
//! Filter: `image`'s Triangle filter, i.e. bilinear interpolation whose support widens
//! when downscaling (antialiased), close to torchvision's `Resize(antialias=True)`.

use image::{imageops, imageops::FilterType, GrayImage, RgbImage};
use rayon::prelude::*;

use super::Dataset;
use crate::model::ImageSize;

pub(crate) const FILTER: FilterType = FilterType::Triangle;

/// Resizes an RGB image to `size` (S_h x S_w) and writes it as [3, S_h, S_w] planes.
pub(crate) fn rgb_to_planes(img: &RgbImage, size: ImageSize, out: &mut [u8]) {
    let (h, w) = (size.height as u32, size.width as u32);
    let resized;
    let img = if img.width() == w && img.height() == h {
        img
    } else {
        resized = imageops::resize(img, w, h, FILTER);
        &resized
    };
    let plane = size.pixels();
    for (i, px) in img.pixels().enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
}

/// Resizes one [C, h, w] image to [C, S_h, S_w]: RGB in one pass, else plane by plane.
fn resize_planes(src: &[u8], channels: usize, from: ImageSize, to: ImageSize, out: &mut [u8]) {
    let (pin, pout) = (from.pixels(), to.pixels());
    let (fw, fh) = (from.width as u32, from.height as u32);
    if channels == 3 {
        let mut hwc = Vec::with_capacity(3 * pin);
        for i in 0..pin {
            hwc.extend_from_slice(&[src[i], src[pin + i], src[2 * pin + i]]);
        }
        // The buffer has exactly 3*h*w bytes, so construction cannot fail.
        let rgb = RgbImage::from_raw(fw, fh, hwc).expect("3*h*w bytes");
        rgb_to_planes(&rgb, to, out);
        return;
    }
    for c in 0..channels {
        let plane = &src[c * pin..(c + 1) * pin];
        // The buffer has exactly h*w bytes, so construction cannot fail.
        let gray = GrayImage::from_raw(fw, fh, plane.to_vec()).expect("plane has h*w bytes");
        let r = imageops::resize(&gray, to.width as u32, to.height as u32, FILTER);
        out[c * pout..(c + 1) * pout].copy_from_slice(r.as_raw());
    }
}

/// The same set with every image resized to `size` (in parallel).
pub(crate) fn resize_dataset(ds: &Dataset, size: ImageSize) -> Dataset {
    if ds.size == size {
        return ds.clone();
    }
    let out_len = ds.channels * size.pixels();
    let mut images = vec![0u8; ds.len() * out_len];
    if out_len > 0 {
        images
            .par_chunks_mut(out_len)
            .enumerate()
            .for_each(|(i, dst)| resize_planes(ds.image(i), ds.channels, ds.size, size, dst));
    }
    Dataset {
        images,
        labels: ds.labels.clone(),
        classes: ds.classes.clone(),
        channels: ds.channels,
        size,
    }
}
