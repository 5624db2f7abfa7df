//! The float type the CPU engine is generic over: f32 trains, f64 checks gradients.

use super::fastmath;
use num_traits::{Float as NumFloat, NumAssign};
use std::fmt::Debug;
use std::iter::Sum;

/// A scalar the CPU ops run on. Implemented for `f32` (training) and `f64` (gradient checks).
pub trait Float:
    NumFloat + NumAssign + Sum + Default + Debug + Send + Sync + Copy + 'static
{
    /// The error function, needed by exact GELU (vectorisable approximation in f32).
    fn erf(self) -> Self;
    /// e^x for x ≤ 0 (softmax, GELU's density; vectorisable approximation in f32).
    fn exp_neg(self) -> Self;
    /// Converts a constant; exact for f64, rounded for f32.
    fn of(x: f64) -> Self;
    /// Widens to f64 (for reductions that must not lose precision, and for reporting).
    fn to_f64(self) -> f64;
}

impl Float for f32 {
    #[inline]
    fn erf(self) -> Self {
        fastmath::erf_f32(self)
    }
    #[inline]
    fn exp_neg(self) -> Self {
        fastmath::exp_neg_f32(self)
    }
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline]
    fn exp_neg(self) -> Self {
        self.exp()
    }
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
}
