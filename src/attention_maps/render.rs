//! The attention sheet of one image: a grid of panels, each the image as the model sees it
//! (resized, not normalised), alone or in grey with a map over the patch grid upsampled
//! bilinearly to the image and overlaid in a colour map, each titled, under a header line.
//!
//! Layout (pixels): every panel is S_h·z x S_w·z, z = ⌈160 / max(S_h, S_w)⌉ (at least 1) so
//! that a 32-pixel image shows at 160; panels sit in ⌈n / 6⌉ rows of ⌈n / rows⌉ columns, each with a title
//! strip above it; see [`sheet_size`].

use crate::model::ImageSize;
use image::RgbImage;
use plotters::prelude::*;

/// Smallest side a panel is zoomed up to.
const MIN_PANEL: usize = 160;
/// Most panels in a row.
const MAX_COLUMNS: usize = 6;
const GAP: usize = 8;
const TITLE: usize = 22;
const HEADER: usize = 30;
/// Weight of the colour map over the image.
const ALPHA: f64 = 0.55;

/// One panel: a title and, unless it shows the image alone, a map [gh·gw] over the patch grid
/// (row-major), with values in [0, 1].
pub struct Panel {
    pub title: String,
    pub map: Option<Vec<f64>>,
}

/// Grid of a sheet of `panels` panels: (rows, columns).
fn grid(panels: usize) -> (usize, usize) {
    let rows = panels.div_ceil(MAX_COLUMNS).max(1);
    (rows, panels.div_ceil(rows).max(1))
}

/// (height, width) of one panel for an image of `size`.
pub fn panel_size(size: ImageSize) -> (usize, usize) {
    let zoom = MIN_PANEL
        .div_ceil(size.height.max(size.width).max(1))
        .max(1);
    (size.height * zoom, size.width * zoom)
}

/// (width, height) of the sheet of `panels` panels of an image of `size`:
/// width = GAP + columns·(P_w + GAP), height = HEADER + rows·(TITLE + P_h + GAP), P the panel.
pub fn sheet_size(panels: usize, size: ImageSize) -> (usize, usize) {
    let (rows, cols) = grid(panels);
    let (ph, pw) = panel_size(size);
    (GAP + cols * (pw + GAP), HEADER + rows * (TITLE + ph + GAP))
}

/// Draws the sheet of `image` [3, S_h, S_w] (bytes, planar RGB) whose patch grid is
/// `patch_grid` (rows, columns): `header` on top, then `panels` in order.
pub fn render(
    image: &[u8],
    size: ImageSize,
    patch_grid: (usize, usize),
    header: &str,
    panels: &[Panel],
) -> Result<RgbImage, String> {
    let ((sh, sw), (gh, gw)) = ((size.height, size.width), patch_grid);
    if image.len() != 3 * sh * sw
        || gh == 0
        || gw == 0
        || !sh.is_multiple_of(gh)
        || !sw.is_multiple_of(gw)
    {
        return Err(format!(
            "render: {} image bytes for a {sh}x{sw} RGB image with a {gh}x{gw} patch grid",
            image.len()
        ));
    }
    let (w, h) = sheet_size(panels.len(), size);
    let (_, cols) = grid(panels.len());
    let (ph, pw) = panel_size(size);
    let mut sheet = RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let plane = sh * sw;
    for (i, panel) in panels.iter().enumerate() {
        let (x0, y0) = (
            GAP + (i % cols) * (pw + GAP),
            HEADER + (i / cols) * (TITLE + ph + GAP) + TITLE,
        );
        if let Some(map) = &panel.map {
            if map.len() != gh * gw {
                return Err(format!(
                    "render: panel '{}' has {} values for a {gh}x{gw} grid",
                    panel.title,
                    map.len()
                ));
            }
        }
        for y in 0..ph {
            for x in 0..pw {
                // The image pixel under this display pixel (nearest), [0, S_h) x [0, S_w).
                let (iy, ix) = (y * sh / ph, x * sw / pw);
                let mut rgb = [0.0f64; 3];
                for (c, v) in rgb.iter_mut().enumerate() {
                    *v = f64::from(image[c * plane + iy * sw + ix]);
                }
                if let Some(map) = &panel.map {
                    // Under a map the image is grey (Rec. 601 luma): colour is the map's alone.
                    let luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                    rgb = [luma; 3];
                    let m = bilinear(
                        map,
                        patch_grid,
                        (y as f64 + 0.5) / ph as f64,
                        (x as f64 + 0.5) / pw as f64,
                    );
                    let col = colour(m);
                    for (v, c) in rgb.iter_mut().zip(col) {
                        *v = (1.0 - ALPHA) * *v + ALPHA * c;
                    }
                }
                let px = rgb.map(|v| v.round().clamp(0.0, 255.0) as u8);
                sheet.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    draw_text(&mut sheet, header, panels, (ph, pw), cols)?;
    Ok(sheet)
}

/// The header and the panels' titles, drawn with plotters in DejaVu Sans.
fn draw_text(
    sheet: &mut RgbImage,
    header: &str,
    panels: &[Panel],
    (ph, pw): (usize, usize),
    cols: usize,
) -> Result<(), String> {
    crate::train::metrics::register_font();
    let (w, h) = sheet.dimensions();
    let buf: &mut [u8] = sheet;
    let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
    let big = ("sans-serif", 18).into_font().color(&BLACK);
    let small = ("sans-serif", 15).into_font().color(&BLACK);
    root.draw_text(header, &big, (GAP as i32, 6))
        .map_err(|e| e.to_string())?;
    for (i, panel) in panels.iter().enumerate() {
        let x = GAP + (i % cols) * (pw + GAP);
        let y = HEADER + (i / cols) * (TITLE + ph + GAP) + 3;
        root.draw_text(&panel.title, &small, (x as i32, y as i32))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The map [gh·gw] at fractional position (v, u) ∈ [0, 1)² of the image, bilinear between
/// patch centres (clamped at the borders).
fn bilinear(map: &[f64], (gh, gw): (usize, usize), v: f64, u: f64) -> f64 {
    let coord = |t: f64, g: usize| {
        let c = (t * g as f64 - 0.5).clamp(0.0, (g - 1) as f64);
        let i = (c.floor() as usize).min(g - 1);
        (i, (i + 1).min(g - 1), c - i as f64)
    };
    let (y0, y1, fy) = coord(v, gh);
    let (x0, x1, fx) = coord(u, gw);
    let at = |y: usize, x: usize| map[y * gw + x];
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The "inferno" colour map (matplotlib), piecewise linear through five of its colours:
/// 0 → near black, 1 → pale yellow.
fn colour(v: f64) -> [f64; 3] {
    const STOPS: [[f64; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [87.0, 16.0, 110.0],
        [188.0, 55.0, 84.0],
        [249.0, 142.0, 9.0],
        [252.0, 255.0, 164.0],
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let s = v * (STOPS.len() - 1) as f64;
    let i = (s.floor() as usize).min(STOPS.len() - 2);
    let f = s - i as f64;
    [0, 1, 2].map(|c| STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f)
}

/// The sheet encoded as PNG.
pub fn png_bytes(sheet: &RgbImage) -> Result<Vec<u8>, String> {
    let mut out = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}
