//! The guard around every exported `extern "C"` function: a panic must never unwind into C
//! (undefined behaviour, and a profiler under test would see a crash instead of an error code).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `body`; if it panics (the panic hook has printed it to stderr) return `on_panic` instead.
pub fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => on_panic,
    }
}

/// Copy a NUL-terminated C string into an owned `String` (lossy); `None` for a null pointer.
///
/// # Safety
/// `ptr` must be null or point to a NUL-terminated string.
pub unsafe fn c_str(ptr: *const libc::c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller promises a NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_the_error_value() {
        std::panic::set_hook(Box::new(|_| {}));
        let rc = guard(999, || -> i32 { panic!("boom") });
        let _ = std::panic::take_hook();
        assert_eq!(rc, 999);
        assert_eq!(guard(999, || 0), 0);
    }
}
