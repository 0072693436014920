//! The CUDA side (feature `cuda`): what the driver, the runtime and each device offer the kernels.
//! `decodebench doctor` reports it; the dtype choice depends on it (bf16 kernels need sm_80).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{CudaDevice, Error, Result};
use std::ffi::c_int;

#[link(name = "cudart")]
extern "C" {
    // candle's CUDA kernels link the runtime already; its version is the toolkit the build used.
    fn cudaRuntimeGetVersion(runtime_version: *mut c_int) -> c_int;
}

/// One CUDA device as the kernels see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (8, 0) for an A100.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: usize,
}

impl CudaDeviceInfo {
    /// Whether candle's bf16 kernels (WMMA) run on this device: compute capability 8.0 or newer.
    pub fn supports_bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }
}

/// The CUDA version the installed driver supports, e.g. 13000 for 13.0 (`cuDriverGetVersion`).
pub fn driver_version() -> Result<i32> {
    let mut version: c_int = 0;
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(Error::wrap)?;
    Ok(version)
}

/// The version of the CUDA runtime library this binary loaded, e.g. 13000 (`cudaRuntimeGetVersion`).
pub fn runtime_version() -> Result<i32> {
    let mut version: c_int = 0;
    match unsafe { cudaRuntimeGetVersion(&mut version) } {
        0 => Ok(version),
        code => candle_core::bail!("cudaRuntimeGetVersion failed with cudaError {code}"),
    }
}

/// How many CUDA devices the driver sees (initialises the driver).
pub fn device_count() -> Result<usize> {
    unsafe { sys::cuInit(0) }.result().map_err(Error::wrap)?;
    let mut count: c_int = 0;
    unsafe { sys::cuDeviceGetCount(&mut count) }.result().map_err(Error::wrap)?;
    Ok(count.max(0) as usize)
}

/// Name, compute capability and memory of the device behind a candle CUDA device.
pub fn device_info(device: &CudaDevice) -> Result<CudaDeviceInfo> {
    let stream = device.cuda_stream();
    let ctx = stream.context();
    let (free_memory, total_memory) = ctx.mem_get_info().map_err(Error::wrap)?;
    Ok(CudaDeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(Error::wrap)?,
        compute_capability: ctx.compute_capability().map_err(Error::wrap)?,
        total_memory,
        free_memory,
    })
}

/// `13020` → `"13.2"`: the encoding of CUDA versions (1000 × major + 10 × minor).
pub fn version_string(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

// These tests need a GPU; without one (no driver, or no device) each returns early after saying
// so. A build with `cuda` cannot start at all on a machine without libcuda.so.1 (CI compiles them
// with `scripts/ci-cuda.sh`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attention, compact_rows};
    use candle_core::{DType, Device, Tensor};

    fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("no CUDA device, skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn version_strings() {
        assert_eq!(version_string(13000), "13.0");
        assert_eq!(version_string(12090), "12.9");
    }

    #[test]
    fn device_info_is_sane() {
        let Some(dev) = gpu() else { return };
        let info = device_info(dev.as_cuda_device().unwrap()).unwrap();
        assert_eq!(info.ordinal, 0);
        assert!(!info.name.is_empty());
        assert!(info.compute_capability.0 >= 5, "{info:?}");
        assert!(info.free_memory <= info.total_memory && info.total_memory > 0, "{info:?}");
        assert!(device_count().unwrap() >= 1);
        assert!(driver_version().unwrap() >= runtime_version().unwrap() / 1000 * 1000, "driver older than the runtime");
    }

    /// The batched attention path on the GPU against the exact CPU kernel, for a tree block with
    /// grouped-query heads.
    #[test]
    fn cuda_tree_attention_matches_cpu() {
        let Some(dev) = gpu() else { return };
        let (b, h, kvh, n, cache, hd) = (1, 4, 2, 5, 7, 64);
        let q = Tensor::randn(0f32, 1., (b, h, n, hd), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1., (b, kvh, cache + n, hd), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1., (b, kvh, cache + n, hd), &Device::Cpu).unwrap();
        let parents = [None, Some(0), Some(0), Some(1), None];
        let want = attention(&q, &k, &v, cache, Some(&parents), true).unwrap();
        let (qg, kg, vg) = (q.to_device(&dev).unwrap(), k.to_device(&dev).unwrap(), v.to_device(&dev).unwrap());
        let got = attention(&qg, &kg, &vg, cache, Some(&parents), true).unwrap().to_device(&Device::Cpu).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max difference {diff}");
        // f16 on the GPU: softmax in f32, same answer to f16 precision.
        let got16 = attention(
            &qg.to_dtype(DType::F16).unwrap(),
            &kg.to_dtype(DType::F16).unwrap(),
            &vg.to_dtype(DType::F16).unwrap(),
            cache,
            Some(&parents),
            true,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
        let diff = (got16 - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 2e-2, "f16 max difference {diff}");
    }

    #[test]
    fn cuda_compact_rows_matches_cpu() {
        let Some(dev) = gpu() else { return };
        let cpu = Tensor::arange(0f32, 16., &Device::Cpu).unwrap().reshape((2, 8, 1)).unwrap();
        let gpu = cpu.to_device(&dev).unwrap();
        compact_rows(&cpu, 1, 2, &[0, 2, 5]).unwrap();
        compact_rows(&gpu, 1, 2, &[0, 2, 5]).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (cpu.flatten_all().unwrap().to_vec1().unwrap(), gpu.flatten_all().unwrap().to_vec1().unwrap());
        assert_eq!(a, b);
    }
}
