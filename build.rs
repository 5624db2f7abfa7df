//! Kernel build. Two independent products, both from kernels/*.cu:
//! - the CUDA emulator (kernels/emu + every kernel compiled as C++ by the `cc` crate), always:
//!   the GPU tests run on it where no GPU exists;
//! - the device code: with nvcc (found through $NVCC, $CUDA_HOME/bin, then $PATH) one fatbin for
//!   sm_80 + sm_90 with compute_80 PTX for newer GPUs, warnings and register spills are errors;
//!   without nvcc the sources are embedded and NVRTC compiles them at run time.
//!
//! Output: $OUT_DIR/kernels_gen.rs, included by src/gpu/embedded.rs.
//! Set VITK_NO_NVCC=1 to force the NVRTC path even where nvcc exists.

use std::collections::HashSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GENCODES: &[&str] = &[
    "arch=compute_80,code=sm_80",
    "arch=compute_90,code=sm_90",
    "arch=compute_80,code=compute_80",
];

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "VITK_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let kernels = sorted_files(&kernels_dir, "cu");
    build_emulator(&kernels_dir, &kernels);

    let mut gen = String::new();
    let nvcc = if env::var_os("VITK_NO_NVCC").is_some() {
        None
    } else {
        find_nvcc()
    };
    match nvcc {
        Some(nvcc) => {
            let fatbin = out.join("vitk_kernels.fatbin");
            compile_fatbin(&nvcc, &kernels, &kernels_dir, &out, &fatbin);
            writeln!(gen, "/// How the device code was built.").unwrap();
            writeln!(
                gen,
                "pub const KERNEL_BUILD: &str = \"fatbin ({})\";",
                nvcc.display()
            )
            .unwrap();
            writeln!(gen, "/// The fatbin (empty when NVRTC compiles `SOURCE`).").unwrap();
            writeln!(
                gen,
                "pub static FATBIN: &[u8] = include_bytes!({:?});",
                fatbin
            )
            .unwrap();
            writeln!(
                gen,
                "/// All kernels as one NVRTC translation unit (empty with a fatbin)."
            )
            .unwrap();
            writeln!(gen, "pub static SOURCE: &str = \"\";").unwrap();
        }
        None => {
            println!(
                "cargo:warning=nvcc not found ($NVCC, $CUDA_HOME/bin, $PATH): embedding the kernel \
                 sources; NVRTC will compile them at run time on a GPU"
            );
            let source = out.join("vitk_kernels_nvrtc.cu");
            fs::write(&source, nvrtc_source(&kernels)).expect("write the NVRTC source");
            writeln!(gen, "/// How the device code was built.").unwrap();
            writeln!(
                gen,
                "pub const KERNEL_BUILD: &str = \"NVRTC at run time (no nvcc at build)\";"
            )
            .unwrap();
            writeln!(gen, "/// The fatbin (empty when NVRTC compiles `SOURCE`).").unwrap();
            writeln!(gen, "pub static FATBIN: &[u8] = &[];").unwrap();
            writeln!(
                gen,
                "/// All kernels as one NVRTC translation unit (empty with a fatbin)."
            )
            .unwrap();
            writeln!(gen, "pub static SOURCE: &str = include_str!({:?});", source).unwrap();
        }
    }
    fs::write(out.join("kernels_gen.rs"), gen).expect("write kernels_gen.rs");
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// The emulator runtime, the kernels and the emulator's own test kernels as one static
/// library. Linked whole: kernels register themselves from static initializers that nothing
/// references by name.
fn build_emulator(kernels_dir: &Path, kernels: &[PathBuf]) {
    let emu = kernels_dir.join("emu");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2) // the emulator runs every test kernel: keep it fast in debug builds too
        .include(kernels_dir)
        .flag("-x")
        .flag("c++")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .warnings_into_errors(true)
        .link_lib_modifier("+whole-archive");
    build.files(sorted_files(&emu, "cpp"));
    build.files(kernels);
    build.files(sorted_files(&emu.join("tests"), "cu"));
    build.compile("vitk_emu");
}

fn find_nvcc() -> Option<PathBuf> {
    let exe = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC") {
        return exe(PathBuf::from(p));
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        if let Some(p) = exe(PathBuf::from(home).join("bin").join("nvcc")) {
            return Some(p);
        }
    }
    env::split_paths(&env::var_os("PATH")?).find_map(|d| exe(d.join("nvcc")))
}

/// One translation unit including every kernel file, compiled once into one fatbin.
fn compile_fatbin(nvcc: &Path, kernels: &[PathBuf], kernels_dir: &Path, out: &Path, fatbin: &Path) {
    let unit = out.join("vitk_kernels_all.cu");
    let mut src = String::from("// Generated by build.rs: every kernels/*.cu in one unit.\n");
    for k in kernels {
        writeln!(src, "#include {:?}", k).unwrap();
    }
    fs::write(&unit, src).expect("write the nvcc unit");
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin").arg("-std=c++17").arg("-O3");
    for g in GENCODES {
        cmd.arg("-gencode").arg(g);
    }
    cmd.args(["-Werror", "all-warnings"])
        .args(["-Xptxas", "-warn-spills,-warn-lmem-usage,-Werror"])
        .arg("-I")
        .arg(kernels_dir)
        .arg("-o")
        .arg(fatbin)
        .arg(&unit);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc failed ({:?}):\n{}{}",
            cmd,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every kernel file with its quoted includes expanded once (NVRTC has no file system view of
/// kernels/); the emulator headers are dropped since NVRTC defines __CUDACC__.
fn nvrtc_source(kernels: &[PathBuf]) -> String {
    let mut seen = HashSet::new();
    let mut out = String::new();
    for k in kernels {
        expand(k, &mut seen, &mut out);
    }
    out
}

fn expand(file: &Path, seen: &mut HashSet<PathBuf>, out: &mut String) {
    let file = fs::canonicalize(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    if !seen.insert(file.clone()) {
        return;
    }
    let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    writeln!(
        out,
        "// ---- {}",
        file.file_name().unwrap().to_string_lossy()
    )
    .unwrap();
    for line in text.lines() {
        let t = line.trim();
        if t == "#pragma once" {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include \"") {
            let name = rest.trim_end_matches('"');
            if !name.starts_with("emu/") {
                expand(&file.parent().unwrap().join(name), seen, out);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
}
