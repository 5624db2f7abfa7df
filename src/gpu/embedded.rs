//! The device code embedded by build.rs: a fatbin from nvcc, or the sources for NVRTC.
include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));
