//! What identifies a loaded data set, so that a run resumed on data at another place (or
//! data changed in place) can be checked against the data it started on: record counts,
//! class names and a CRC-32 of the first training records (labels and pixels, after
//! decoding and resizing). Cheap to compute on any size of set; not a proof against a
//! deliberate change past the first records.

use serde::{Deserialize, Serialize};

use super::Splits;

/// Training records hashed.
pub const HEAD_RECORDS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub train_records: usize,
    pub val_records: usize,
    pub classes: Vec<String>,
    /// How many of the first training records `head_crc32` covers (HEAD_RECORDS at most).
    pub head_records: usize,
    /// CRC-32 of those records, each its label (u16, little-endian) then its pixels.
    pub head_crc32: String,
}

impl Fingerprint {
    pub fn of(splits: &Splits) -> Self {
        let train = &splits.train;
        let head = train.len().min(HEAD_RECORDS);
        let mut h = crc32fast::Hasher::new();
        for i in 0..head {
            h.update(&train.labels[i].to_le_bytes());
            h.update(train.image(i));
        }
        Fingerprint {
            train_records: train.len(),
            val_records: splits.val.len(),
            classes: train.classes.clone(),
            head_records: head,
            head_crc32: format!("{:08x}", h.finalize()),
        }
    }

    /// How `self` (the data found) differs from `expected`, one phrase per difference;
    /// empty when they match.
    pub fn differences(&self, expected: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut count = |what: &str, found: usize, want: usize| {
            if found != want {
                out.push(format!("{what}: {found} here, {want} expected"));
            }
        };
        count(
            "training records",
            self.train_records,
            expected.train_records,
        );
        count("validation records", self.val_records, expected.val_records);
        if self.classes != expected.classes {
            out.push(format!(
                "classes: {:?} here, {:?} expected",
                self.classes, expected.classes
            ));
        }
        if (self.head_records, &self.head_crc32) != (expected.head_records, &expected.head_crc32) {
            out.push(format!(
                "first {} training records: CRC-32 {} here, {} expected",
                expected.head_records, self.head_crc32, expected.head_crc32
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::generate_splits;

    #[test]
    fn equal_data_match_and_changes_are_named() {
        let a = generate_splits(300, 20, 1);
        let fa = Fingerprint::of(&a);
        assert_eq!(fa.head_records, HEAD_RECORDS);
        assert!(Fingerprint::of(&a.clone()).differences(&fa).is_empty());

        let mut b = a.clone();
        b.train.images[5] ^= 1;
        let d = Fingerprint::of(&b).differences(&fa);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("first 256 training records"), "{d:?}");

        let fewer = generate_splits(299, 20, 1);
        let d = Fingerprint::of(&fewer).differences(&fa);
        assert!(
            d.iter()
                .any(|x| x == "training records: 299 here, 300 expected"),
            "{d:?}"
        );

        let mut renamed = a;
        renamed.train.classes[0] = "zero".into();
        let d = Fingerprint::of(&renamed).differences(&fa);
        assert!(d[0].starts_with("classes:"), "{d:?}");
    }
}
