//! Give the cdylib NCCL's soname so it can be staged and probed as `libnccl.so.2`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnccl.so.2");
    println!("cargo:rerun-if-changed=build.rs");
}
