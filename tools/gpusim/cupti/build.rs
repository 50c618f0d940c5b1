//! Give the cdylib CUPTI 12's soname (`libcupti.so.12`); staging adds the `libcupti.so` link.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcupti.so.12");
    println!("cargo:rerun-if-changed=build.rs");
}
