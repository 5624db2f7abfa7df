//! The input size of a model, S_h x S_w: one number for square inputs, as timm's `img_size`
//! takes an int or an (H, W) pair.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Input height and width in pixels. Written "48" when square, "40x56" (height x width, as
/// timm's `img_size=(40, 56)`) when not; config files hold 48 or [40, 56].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageSize {
    pub height: usize,
    pub width: usize,
}

impl ImageSize {
    pub const fn square(side: usize) -> Self {
        Self {
            height: side,
            width: side,
        }
    }

    /// S_h · S_w.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    pub fn is_square(&self) -> bool {
        self.height == self.width
    }

    /// The patch grid (rows, columns) at patch size `p` (which must divide both sides).
    pub fn grid(&self, p: usize) -> (usize, usize) {
        (self.height / p, self.width / p)
    }
}

impl From<usize> for ImageSize {
    fn from(side: usize) -> Self {
        Self::square(side)
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_square() {
            write!(f, "{}", self.height)
        } else {
            write!(f, "{}x{}", self.height, self.width)
        }
    }
}

impl std::str::FromStr for ImageSize {
    type Err = String;
    /// "48" or "40x56" (height x width).
    fn from_str(s: &str) -> Result<Self, String> {
        let side = |v: &str| -> Result<usize, String> {
            v.trim().parse::<usize>().map_err(|_| {
                format!("'{s}' is not an image size: expected a whole number of pixels (48) or height x width (40x56)")
            })
        };
        match s.split_once(['x', 'X']) {
            Some((h, w)) => Ok(Self {
                height: side(h)?,
                width: side(w)?,
            }),
            None => side(s).map(Self::square),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Square(usize),
    Pair([usize; 2]),
}

impl Serialize for ImageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_square() {
            Stored::Square(self.height).serialize(s)
        } else {
            Stored::Pair([self.height, self.width]).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Square(s) => Self::square(s),
            Stored::Pair([height, width]) => Self { height, width },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_stores_both_forms() {
        let sq: ImageSize = "48".parse().expect("48");
        assert_eq!(sq, ImageSize::square(48));
        let r: ImageSize = "40x56".parse().expect("40x56");
        assert_eq!((r.height, r.width), (40, 56));
        assert_eq!(
            (sq.to_string(), r.to_string()),
            ("48".into(), "40x56".into())
        );
        assert_eq!(serde_json::to_string(&sq).expect("json"), "48");
        assert_eq!(serde_json::to_string(&r).expect("json"), "[40,56]");
        let back: ImageSize = serde_json::from_str("[40,56]").expect("json");
        assert_eq!(back, r);
        assert_eq!(
            serde_json::from_str::<ImageSize>("32").expect("json"),
            ImageSize::square(32)
        );
        for bad in ["", "x", "40x", "4.5", "-3", "40x56x2"] {
            assert!(bad.parse::<ImageSize>().is_err(), "{bad}");
        }
    }
}
