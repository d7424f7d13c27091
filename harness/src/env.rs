//! Facts about this build and machine: harness version and commit, the libtorch actually
//! loaded, devices. Used by `harness doctor` and written to each run's `env.json`.

use serde::Serialize;
use tch::Device;

/// Provenance recorded with each run.
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub harness_version: &'static str,
    pub git_commit: &'static str,
    pub torch_version: String,
    pub torch_lib: String,
    pub device: String,
    pub threads: i32,
    pub hostname: String,
    /// Convolutions ran channels-last (`KD_HARNESS_CHANNELS_LAST`, default on). Like the thread
    /// count it changes float summation order, not the computation, so it is not part of run ids.
    pub channels_last: bool,
    /// The run's `train.precision` (fp32 for every run planned without it): forward passes
    /// under autocast in that dtype; losses and the optimiser in fp32.
    pub precision: crate::suite::spec::Precision,
}

/// Whether training runs convolutions channels-last: on unless `KD_HARNESS_CHANNELS_LAST=0`.
pub fn channels_last() -> bool {
    std::env::var("KD_HARNESS_CHANNELS_LAST").map(|v| v.trim() != "0").unwrap_or(true)
}

pub fn harness_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn git_commit() -> &'static str {
    option_env!("HARNESS_GIT_COMMIT").unwrap_or("unknown")
}

/// Directory of the libtorch loaded into this process (from /proc/self/maps).
pub fn torch_lib_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
}

/// Version of the loaded libtorch: `torch/version.py` next to its lib dir (pip wheels), or
/// `build-version` (standalone libtorch), else "unknown".
pub fn torch_version() -> String {
    let Some(lib) = torch_lib_dir() else { return "unknown".into() };
    let root = lib.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if let Ok(v) = std::fs::read_to_string(root.join("version.py")) {
        for line in v.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                return rest.trim_start_matches([' ', '=']).trim().trim_matches(['\'', '"']).to_string();
            }
        }
    }
    std::fs::read_to_string(root.join("build-version")).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Loads `libtorch_cuda.so` if present, in case the linker dropped it (belt and braces with
/// the `--no-as-needed` link in build.rs). Failure is normal on CPU-only installs.
pub fn preload_cuda() {
    unsafe extern "C" {
        fn dlopen(filename: *const std::ffi::c_char, flag: std::ffi::c_int) -> *mut std::ffi::c_void;
    }
    const RTLD_NOW: std::ffi::c_int = 2;
    const RTLD_GLOBAL: std::ffi::c_int = 0x100;
    if let Some(dir) = torch_lib_dir() {
        let p = dir.join("libtorch_cuda.so");
        if p.exists() {
            if let Ok(c) = std::ffi::CString::new(p.to_string_lossy().as_bytes()) {
                // SAFETY: a valid NUL-terminated path; the handle is intentionally kept open.
                unsafe {
                    dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL);
                }
            }
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_checked(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda_checked(n),
            None => crate::input_bail!("--device `{other}`: expected cpu, cuda, cuda:N or auto"),
        },
    }
}

fn cuda_checked(n: usize) -> anyhow::Result<Device> {
    if !tch::Cuda::is_available() {
        crate::input_bail!("--device cuda:{n}: CUDA is not available here (see `harness doctor`)");
    }
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        crate::input_bail!("--device cuda:{n}: only {count} CUDA device(s) visible");
    }
    Ok(Device::Cuda(n))
}

/// Human name of a device.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

/// GPU names from nvidia-smi (libtorch's C API in tch does not expose them).
pub fn gpu_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_default()
}

impl Provenance {
    pub fn collect(device: Device) -> Provenance {
        Provenance {
            harness_version: harness_version(),
            git_commit: git_commit(),
            torch_version: torch_version(),
            torch_lib: torch_lib_dir().map(|p| p.display().to_string()).unwrap_or_default(),
            device: device_name(device),
            threads: tch::get_num_threads(),
            hostname: crate::store::hostname(),
            channels_last: channels_last(),
            precision: crate::suite::spec::Precision::Fp32,
        }
    }

    /// The same, for a run in `precision`.
    pub fn for_run(device: Device, precision: crate::suite::spec::Precision) -> Provenance {
        Provenance { precision, ..Provenance::collect(device) }
    }
}
