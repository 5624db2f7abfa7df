//! Opening a device: a machine without libcuda or without a GPU gets an error value naming the
//! reason, never a panic; device names from VITK_TEST_DEVICE are parsed strictly.

use vitk::gpu::{DeviceKind, GpuError};

#[test]
fn opening_cuda_returns_a_device_or_an_error_never_panics() {
    match vitk::gpu::open(DeviceKind::Cuda) {
        Ok(rt) => println!("CUDA device: {}", rt.describe()),
        Err(e) => {
            println!("no CUDA here: {e}");
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn device_names_parse_strictly() {
    assert_eq!(DeviceKind::parse("cuda").unwrap(), DeviceKind::Cuda);
    assert_eq!(DeviceKind::parse("emulator").unwrap(), DeviceKind::Emulator);
    assert_eq!(DeviceKind::parse("").unwrap(), DeviceKind::Emulator);
    assert!(matches!(DeviceKind::parse("tpu"), Err(GpuError::Unavailable(m)) if m.contains("tpu")));
}
