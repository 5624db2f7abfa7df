//! Safe strided matrix products on top of the `gemm` crate.
//!
//! Every product in the CPU engine goes through `matmul`, which checks that each view fits
//! inside its slice before handing raw pointers to `gemm`. This is the only `unsafe` in
//! the CPU engine: it is the boundary to an external kernel, like the FFI layer of the GPU engine.

use super::Float;

/// A read-only matrix view: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, F> {
    pub data: &'a [F],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A writable matrix view with the same indexing as [`MatRef`].
pub struct MatMut<'a, F> {
    pub data: &'a mut [F],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, F> MatRef<'a, F> {
    /// A dense row-major [rows, cols] matrix.
    pub fn rows(data: &'a [F], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// Row-major [rows, cols] with rows `row_stride` apart (a column slice of a wider matrix).
    pub fn strided(data: &'a [F], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    fn fits(&self) -> bool {
        fits(
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
        )
    }
}

impl<'a, F> MatMut<'a, F> {
    /// A dense row-major [rows, cols] matrix.
    pub fn rows(data: &'a mut [F], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// Row-major [rows, cols] with rows `row_stride` apart (a column slice of a wider matrix).
    pub fn strided(data: &'a mut [F], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
    fn fits(&self) -> bool {
        fits(
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
        )
    }
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// Whether a product may spread over the rayon pool. Products inside an already parallel
/// loop (attention heads) run serially.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Par {
    Serial,
    Rayon,
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`), scaled by `scale`:
/// dst[m, n] (+)= scale · Σ_k lhs[m, k] · rhs[k, n].
///
/// Panics if a view does not fit its slice or the shapes disagree: both are bugs in the
/// engine, never user input (shapes are validated when the model is configured).
pub fn matmul<F: Float>(
    dst: MatMut<'_, F>,
    lhs: MatRef<'_, F>,
    rhs: MatRef<'_, F>,
    scale: F,
    accumulate: bool,
    par: Par,
) {
    assert_eq!(lhs.rows, dst.rows, "matmul: lhs rows vs dst rows");
    assert_eq!(rhs.cols, dst.cols, "matmul: rhs cols vs dst cols");
    assert_eq!(lhs.cols, rhs.rows, "matmul: inner dimensions");
    assert!(
        dst.fits() && lhs.fits() && rhs.fits(),
        "matmul: view outside its slice"
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        if !accumulate {
            for i in 0..dst.rows {
                for j in 0..dst.cols {
                    dst.data[i * dst.row_stride + j * dst.col_stride] = F::zero();
                }
            }
        }
        return;
    }
    let parallelism = match par {
        Par::Serial => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: the three views were checked above to lie inside their slices; `dst` is an
    // exclusive borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            F::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}
