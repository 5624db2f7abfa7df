//! Value parsers of the numeric flags: a value that is not a number of the right kind says
//! what was expected (clap names the flag and the value in front). Negative numbers reach
//! them (`allow_negative_numbers`), so that they get a range error, not "unexpected argument".

/// A whole number (counts, sizes, seeds).
pub fn whole(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a whole number (0, 1, 2, ...)".to_string())
}

/// A whole number of 64 bits (steps, seeds).
pub fn whole_u64(s: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a whole number (0, 1, 2, ...)".to_string())
}

/// A real number (rates, coefficients); its range is checked with the others.
pub fn number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a number such as 0.5 or 1e-3".to_string())
}

/// A real number in f32 (normalisation).
pub fn number_f32(s: &str) -> Result<f32, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a number such as 0.5".to_string())
}
