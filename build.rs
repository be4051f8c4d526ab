//! With the `cuda` feature: multigate's own kernels (src/backend/candle/kernels/*.cu)
//! to PTX with nvcc, for the GPU's compute capability (`CUDA_COMPUTE_CAP`, default 90:
//! H100/H200). A kernel that does not compile fails the build here, not on the GPU.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/backend/candle/kernels/multigate.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("multigate.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("--gpu-architecture=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/backend/candle/kernels/multigate.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed ({s}) on src/backend/candle/kernels/multigate.cu"),
        Err(e) => panic!(
            "cannot run `{nvcc}` ({e}): the cuda feature needs the CUDA toolkit (source ../shared/cuda/toolchain.sh)"
        ),
    }
}
