//! Checksums of the tensor bytes in the safetensors files vitk writes (model.safetensors,
//! state.safetensors), so that a file damaged after it was written (disk, copy, transfer)
//! is refused when it is read, naming the tensor, instead of being trained on.
//!
//! Metadata keys: `vitk.crc32`, a JSON object mapping each tensor name to 8 hex digits, the
//! CRC-32 (IEEE, as Python's `zlib.crc32`) of the tensor's bytes as stored; `vitk.writer`,
//! `vitk <version>`. Readers that do not know them (timm, `safetensors.torch`) ignore
//! metadata. Files without `vitk.crc32` (older vitk, timm, PyTorch) are read unchecked.

use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};

/// Metadata key of the per-tensor checksums; the algorithm is part of the name.
pub const CRC32_KEY: &str = "vitk.crc32";
/// Metadata key naming the program that wrote the file.
pub const WRITER_KEY: &str = "vitk.writer";

/// `vitk <version>`, recorded in every file vitk writes.
pub fn writer() -> &'static str {
    concat!("vitk ", env!("CARGO_PKG_VERSION"))
}

fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Records the checksum of every tensor and the writer in `meta`.
pub fn stamp<'a>(
    meta: &mut HashMap<String, String>,
    tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) {
    // Sorted, so that the same tensors always give the same header.
    let sums: BTreeMap<&str, String> = tensors
        .into_iter()
        .map(|(name, bytes)| (name, crc32_hex(bytes)))
        .collect();
    // A map of strings always serialises.
    meta.insert(
        CRC32_KEY.to_string(),
        serde_json::to_string(&sums).unwrap_or_default(),
    );
    meta.insert(WRITER_KEY.to_string(), writer().to_string());
}

/// What [`verify`] could check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Every tensor matches its recorded checksum.
    Checked,
    /// The file records no checksums (written by an older vitk, timm or PyTorch).
    NoChecksum,
}

/// Problems listed by name before the rest are counted.
const LISTED: usize = 4;

/// Checks every tensor of `st` against the checksums in its metadata `meta`. The error says
/// which tensors differ and how (the caller names the file).
pub fn verify(
    st: &SafeTensors,
    meta: Option<&HashMap<String, String>>,
) -> Result<Verified, String> {
    let Some(text) = meta.and_then(|m| m.get(CRC32_KEY)) else {
        return Ok(Verified::NoChecksum);
    };
    let writer = meta
        .and_then(|m| m.get(WRITER_KEY))
        .map_or("an unnamed writer", String::as_str);
    let sums: HashMap<String, String> = serde_json::from_str(text).map_err(|e| {
        format!("corrupted: metadata {CRC32_KEY} is not a JSON object of tensor checksums ({e})")
    })?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut problems = Vec::new();
    for (name, t) in &tensors {
        match sums.get(name) {
            None => problems.push(format!("tensor '{name}' has no checksum in {CRC32_KEY}")),
            Some(want) => {
                let got = crc32_hex(t.data());
                if got != *want {
                    problems.push(format!(
                        "tensor '{name}': its {} bytes have CRC-32 {got}, the file records {want}",
                        t.data().len()
                    ));
                }
            }
        }
    }
    let mut absent: Vec<&String> = sums
        .keys()
        .filter(|n| !tensors.iter().any(|(name, _)| name == *n))
        .collect();
    absent.sort();
    problems.extend(
        absent
            .into_iter()
            .map(|n| format!("tensor '{n}' has a checksum but is not in the file")),
    );
    if problems.is_empty() {
        return Ok(Verified::Checked);
    }
    let more = problems.len().saturating_sub(LISTED);
    problems.truncate(LISTED);
    if more > 0 {
        problems.push(format!("{more} more"));
    }
    Err(format!(
        "corrupted: {} (written by {writer}; the bytes changed after they were written)",
        problems.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn file(data: &[(&str, Vec<u8>)], meta: HashMap<String, String>) -> Vec<u8> {
        let views = data.iter().map(|(n, b)| {
            let v = TensorView::new(Dtype::U8, vec![b.len()], b).expect("view");
            (n.to_string(), v)
        });
        safetensors::serialize(views, Some(meta)).expect("serialize")
    }

    fn check(bytes: &[u8]) -> Result<Verified, String> {
        let st = SafeTensors::deserialize(bytes).expect("safetensors");
        let (_, header) = SafeTensors::read_metadata(bytes).expect("header");
        verify(&st, header.metadata().as_ref())
    }

    #[test]
    fn crc32_is_zlibs() {
        // zlib.crc32(b"123456789") == 0xcbf43926, the standard check value.
        assert_eq!(crc32_hex(b"123456789"), "cbf43926");
    }

    #[test]
    fn stamped_files_verify_and_damage_is_named() {
        let data = [("a", vec![1u8, 2, 3]), ("b", vec![4u8; 10])];
        let mut meta = HashMap::new();
        stamp(&mut meta, data.iter().map(|(n, b)| (*n, &b[..])));
        assert_eq!(meta[WRITER_KEY], writer());
        assert_eq!(check(&file(&data, meta.clone())), Ok(Verified::Checked));

        let damaged = [
            ("a", vec![1u8, 2, 3]),
            ("b", vec![4u8, 4, 4, 5, 4, 4, 4, 4, 4, 4]),
        ];
        let e = check(&file(&damaged, meta.clone())).expect_err("damaged");
        assert!(e.contains("tensor 'b'") && e.contains("10 bytes"), "{e}");
        assert!(!e.contains("tensor 'a'"), "{e}");

        let extra = [("a", vec![1u8, 2, 3]), ("b", vec![4u8; 10]), ("c", vec![0])];
        let e = check(&file(&extra, meta.clone())).expect_err("extra");
        assert!(e.contains("'c' has no checksum"), "{e}");
        let e = check(&file(&data[..1], meta.clone())).expect_err("missing");
        assert!(
            e.contains("'b' has a checksum but is not in the file"),
            "{e}"
        );

        let mut bad = meta;
        bad.insert(CRC32_KEY.into(), "{".into());
        let e = check(&file(&data, bad)).expect_err("bad json");
        assert!(e.contains(CRC32_KEY), "{e}");
    }

    #[test]
    fn files_without_checksums_are_unchecked() {
        let data = [("a", vec![1u8])];
        assert_eq!(
            check(&file(&data, HashMap::new())),
            Ok(Verified::NoChecksum)
        );
    }
}
