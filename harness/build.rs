//! Compiles the autocast shim (`csrc/autocast.cpp`) against the libtorch that torch-sys found,
//! embeds a run path to libtorch and keeps `libtorch_cuda.so` linked (rustc links with
//! `--as-needed`, which would otherwise drop it and silently disable CUDA).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // Re-embed the commit when HEAD moves.
    for p in ["../.git/HEAD", "../.git/refs/heads"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    // torch-sys exports its libtorch lib dir (`links = "tch"`) on Linux and macOS.
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: the autocast shim needs libtorch's headers (Linux or macOS)");
    };
    let lib = Path::new(&lib);
    shim(lib);
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output() {
        if out.status.success() {
            println!("cargo:rustc-env=HARNESS_GIT_COMMIT={}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The shim over `at::autocast` (tch 0.24 exposes only CUDA autocast at its default dtype).
/// Headers sit next to the lib dir in both a pip wheel and a standalone libtorch; the flags are
/// torch-sys's own (C++17, its C++11-ABI choice: `LIBTORCH_CXX11_ABI`, default 1 as all
/// PyTorch ≥ 2.6 Linux builds).
fn shim(lib: &Path) {
    let root = lib.parent().unwrap_or(lib);
    let include = root.join("include");
    if !include.join("ATen/autocast_mode.h").is_file() {
        panic!("{}: no ATen/autocast_mode.h; the autocast shim needs libtorch's headers next to its lib dir", include.display());
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/autocast.cpp")
        .compile("kdh_autocast");
}
