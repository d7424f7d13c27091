// Thin C ABI over libtorch's per-device autocast state (ATen/autocast_mode.h). tch 0.24 only
// wraps the deprecated CUDA-only calls at their default dtype; training in bf16/fp16 on the CPU
// and picking the dtype on CUDA needs the device-typed API. Every call is thread-local state in
// libtorch, so the Rust side keeps its guard on one thread. Errors (a c10::Error from an
// unsupported device or dtype) come back as a non-zero status with the message in `err`.
#include <ATen/autocast_mode.h>

#include <cstring>
#include <exception>

namespace {

// Codes shared with harness/src/train/precision.rs (kept independent of c10's enum values).
bool device_of(int code, c10::DeviceType* out) {
  switch (code) {
    case 0: *out = c10::DeviceType::CPU; return true;
    case 1: *out = c10::DeviceType::CUDA; return true;
    default: return false;
  }
}

bool dtype_of(int code, at::ScalarType* out) {
  switch (code) {
    case 0: *out = at::kFloat; return true;
    case 1: *out = at::kBFloat16; return true;
    case 2: *out = at::kHalf; return true;
    default: return false;
  }
}

int code_of(at::ScalarType t) {
  if (t == at::kFloat) return 0;
  if (t == at::kBFloat16) return 1;
  if (t == at::kHalf) return 2;
  return -1;
}

void copy_err(const char* msg, char* err, size_t len) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, msg, len - 1);
  err[len - 1] = '\0';
}

}  // namespace

extern "C" {

// Reads the device's autocast state: enabled flag and dtype code (-1 for a dtype we do not name).
int kdh_autocast_get(int device, int* enabled, int* dtype, char* err, size_t len) {
  try {
    c10::DeviceType d;
    if (!device_of(device, &d)) { copy_err("unknown device code", err, len); return 1; }
    *enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    *dtype = code_of(at::autocast::get_autocast_dtype(d));
    return 0;
  } catch (const std::exception& e) {
    copy_err(e.what(), err, len);
    return 1;
  }
}

// Sets the device's autocast state; `dtype` < 0 leaves the dtype unchanged.
int kdh_autocast_set(int device, int enabled, int dtype, char* err, size_t len) {
  try {
    c10::DeviceType d;
    if (!device_of(device, &d)) { copy_err("unknown device code", err, len); return 1; }
    if (dtype >= 0) {
      at::ScalarType t;
      if (!dtype_of(dtype, &t)) { copy_err("unknown dtype code", err, len); return 1; }
      at::autocast::set_autocast_dtype(d, t);
    }
    at::autocast::set_autocast_enabled(d, enabled != 0);
    return 0;
  } catch (const std::exception& e) {
    copy_err(e.what(), err, len);
    return 1;
  }
}

// Region nesting as torch.autocast's __enter__/__exit__: the weight-cast cache is cleared when
// the outermost region closes (so updated weights are re-cast at the next step).
int kdh_autocast_enter_region() { return at::autocast::increment_nesting(); }

int kdh_autocast_exit_region() {
  int depth = at::autocast::decrement_nesting();
  if (depth == 0) at::autocast::clear_cache();
  return depth;
}

}  // extern "C"
