//! `vitk info`: presets, parameter counts, threads, devices.

use anyhow::Result;
use std::process::ExitCode;
use vitk::model::{ModelConfig, ParamLayout, PRESETS};

pub fn run() -> Result<ExitCode> {
    println!("vitk {}", env!("CARGO_PKG_VERSION"));
    println!("presets (32x32x3 input, patch 4, 10 classes, cls pooling):");
    println!(
        "  {:<8} {:>5} {:>3} {:>3} {:>5} {:>12}",
        "name", "D", "L", "H", "M", "parameters"
    );
    for &(name, ..) in PRESETS {
        let cfg = ModelConfig::preset(name)?;
        let n = ParamLayout::new(&cfg).len;
        println!(
            "  {:<8} {:>5} {:>3} {:>3} {:>5} {:>12}",
            name, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, n
        );
    }
    println!(
        "cpu: {} threads (rayon; set with --threads or RAYON_NUM_THREADS)",
        rayon::current_num_threads()
    );
    println!("kernels: {}", vitk::gpu::embedded::KERNEL_BUILD);
    println!("devices: cpu (fp32), emu (the CUDA emulator; --precision fp32 by default, bf16 too)");
    println!(
        "precision on CUDA: bf16 by default (tensor-core matmuls, fp32 master weights), or fp32"
    );
    match vitk::gpu::cuda::CudaRuntime::device_names() {
        Ok(names) if names.is_empty() => println!("cuda: no devices"),
        Ok(names) => {
            for (i, n) in names.iter().enumerate() {
                println!("cuda:{i}: {n}");
            }
        }
        Err(e) => println!("cuda: none ({e})"),
    }
    Ok(ExitCode::SUCCESS)
}
