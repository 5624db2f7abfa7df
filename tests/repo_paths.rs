//! The repository is self-contained: its documentation, scripts, CI and code name no path
//! outside it. A clean clone on another machine must build, test and bundle with nothing but
//! what it holds and what the user passes in (arguments, environment variables).
//!
//! Flagged, in README.md, docs/, scripts/, .ci/ and the sources:
//! - absolute paths into machine-specific trees (`/work/`, `/home/`, `/root/`, `/Users/`,
//!   `/mnt/`) and home-relative ones (`~/...`, `$HOME`);
//! - a `..` segment followed by a name that climbs out of the repository: relative to the
//!   file for Markdown, Rust and C/C++ sources (links, includes), relative to the file and
//!   to the repository root (the scripts' working directory) elsewhere; inside a composed
//!   path (`$root/../x`, `$(dirname "$0")/../x`) always: write it from the root instead;
//! - Markdown documents named but absent from the repository (`NAME.md`), and the phrase
//!   "shared folder" (a document kept outside the repository).

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Top-level files and folders whose text is checked.
const SCANNED: &[&str] = &[
    "README.md",
    "docs",
    "scripts",
    ".ci",
    "src",
    "tests",
    "benches",
    "kernels",
    "build.rs",
    "Cargo.toml",
    ".cargo",
];

/// Absolute path prefixes of machine-specific trees.
const HOST_PREFIXES: &[&str] = &["/work/", "/home/", "/root/", "/Users/", "/mnt/"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out);
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

/// Every Markdown file name in the repository's scanned trees.
fn markdown_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Characters that may appear inside a path token.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/$~{}+@%".contains(c)
}

/// Whether `base` joined with `rel`, normalised lexically, stays inside `root`.
fn stays_inside(root: &Path, base: &Path, rel: &str) -> bool {
    let mut depth: Vec<String> = base
        .strip_prefix(root)
        .expect("file under the root")
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            s => depth.push(s.to_string()),
        }
    }
    true
}

/// Findings in one line of `file`.
fn check_line(
    root: &Path,
    file: &Path,
    line: &str,
    md_names: &[String],
    findings: &mut Vec<String>,
) {
    let chars: Vec<char> = line.chars().collect();
    let text = line;
    let mut found = |what: String| findings.push(what);

    // 1. Absolute paths into machine-specific trees, home-relative paths.
    for prefix in HOST_PREFIXES {
        for (i, _) in text.match_indices(prefix) {
            let before = text[..i].chars().last();
            if before.is_none_or(|c| !is_path_char(c) && c != ')') {
                found(format!("absolute host path `{prefix}...`"));
            }
        }
    }
    for (i, _) in text.match_indices("~/") {
        let before = text[..i].chars().last();
        if before.is_none_or(|c| !is_path_char(c)) {
            found("home-relative path `~/...`".into());
        }
    }
    for home in ["$HOME", "${HOME}"] {
        if text.contains(home) {
            found(format!("home-relative path `{home}`"));
        }
    }

    // 2. `..` segments followed by a name.
    let dir = file.parent().expect("file has a parent");
    let file_relative = file.extension().is_some_and(|e| {
        ["md", "rs", "cu", "cuh", "h", "hpp", "c", "cpp"].contains(&e.to_string_lossy().as_ref())
    });
    let n = chars.len();
    let mut i = 0;
    while i + 2 < n {
        let is_segment = chars[i] == '.'
            && chars[i + 1] == '.'
            && chars[i + 2] == '/'
            && (i == 0 || chars[i - 1] != '.');
        if !is_segment {
            i += 1;
            continue;
        }
        // The token: from here to the first character that cannot be in a path.
        let end = (i..n).find(|&j| !is_path_char(chars[j])).unwrap_or(n);
        let token: String = chars[i..end].iter().collect();
        let climbs_to_a_name = token
            .split('/')
            .skip_while(|s| *s == ".." || s.is_empty())
            .any(|s| !s.is_empty());
        let composed = i > 0 && chars[i - 1] == '/';
        if climbs_to_a_name {
            if composed {
                found(format!(
                    "`..` inside a composed path (`.../{token}`): write it from the repository root"
                ));
            } else {
                let inside = if file_relative {
                    stays_inside(root, dir, &token)
                } else {
                    stays_inside(root, dir, &token) && stays_inside(root, root, &token)
                };
                if !inside {
                    found(format!("`{token}` climbs out of the repository"));
                }
            }
        }
        // Skip the rest of this token (its further `..` segments are part of the same path).
        i = end.max(i + 1);
    }

    // 3. Documents outside the repository.
    if text.to_ascii_lowercase().contains("shared folder") {
        found("names a \"shared folder\" outside the repository".into());
    }
    for (i, _) in text.match_indices(".md") {
        let after = text[i + 3..].chars().next();
        if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_-".contains(c)))
            .map_or(0, |p| p + 1);
        let name = &text[start..i + 3];
        if name.len() > 3 && !md_names.iter().any(|m| m == name) {
            found(format!("names `{name}`, which is not in the repository"));
        }
    }
}

fn scan() -> Vec<String> {
    let root = root();
    let this_file = root.join("tests").join("repo_paths.rs");
    let mut files = Vec::new();
    for top in SCANNED {
        walk(&root.join(top), &mut files);
    }
    let md_names = markdown_names(&files);
    let mut findings = Vec::new();
    for file in files.iter().filter(|f| **f != this_file) {
        let Ok(content) = fs::read_to_string(file) else {
            continue; // not text
        };
        let rel = file.strip_prefix(&root).expect("under the root").display();
        for (no, line) in content.lines().enumerate() {
            let mut here = Vec::new();
            check_line(&root, file, line, &md_names, &mut here);
            for what in here {
                findings.push(format!("{rel}:{}: {what}\n    {}", no + 1, line.trim()));
            }
        }
    }
    findings
}

#[test]
fn no_path_outside_the_repository() {
    let findings = scan();
    assert!(
        findings.is_empty(),
        "{} reference(s) to paths outside the repository (take them as arguments or \
         environment variables instead):\n{}",
        findings.len(),
        findings.join("\n")
    );
}

/// The checks themselves, on lines that must and must not be flagged.
#[test]
fn the_checks_flag_what_they_should() {
    let root = root();
    let script = root.join("scripts").join("x.sh");
    let doc = root.join("docs").join("x.md");
    let md = vec!["README.md".to_string()];
    let flagged = |file: &Path, line: &str| {
        let mut f = Vec::new();
        check_line(&root, file, line, &md, &mut f);
        !f.is_empty()
    };
    for line in [
        r#"bash "$root/../shared/data/make.sh""#,
        "# built by ../shared/data/make.sh",
        "cp /work/shared/data/x.tar.gz .",
        "see /home/alice/data",
        "python3 -m venv ~/pyref",
        "ls $HOME/data",
        "See DESIGN.md in the project's shared folder",
        r#"x="$(dirname "$0")/../scripts/y.sh""#,
    ] {
        assert!(flagged(&script, line), "not flagged: {line}");
    }
    for line in [
        r#"root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)""#,
        r#"cd "$(dirname "$0")/..""#,
        "data_batch_1.bin .. data_batch_5.bin",
        "url=https://www.cs.toronto.edu/~kriz/cifar.tar.gz",
        "see README.md",
        "/usr/bin/time -v",
        "x = y / home / z",
    ] {
        assert!(!flagged(&script, line), "flagged: {line}");
    }
    assert!(!flagged(&doc, "[the README](../README.md)"));
    assert!(flagged(&doc, "[x](../../outside.txt)"));
    assert!(flagged(&script, "[x](../outside.txt)"));
}
