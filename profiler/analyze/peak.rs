//! Peak dense tensor FLOP/s per GPU and data type (vendor datasheets, no sparsity), for the
//! model-FLOPs source (`--flops-per-step`) when `--peak-flops` is not given.

/// Data types of the table.
pub const DTYPES: [&str; 4] = ["bf16", "fp16", "tf32", "fp8"];

/// (GPU, [bf16, fp16, tf32, fp8] dense TFLOP/s; 0 = not supported).
const TABLE: [(&str, [f64; 4]); 8] = [
    ("A100", [312.0, 312.0, 156.0, 0.0]),
    ("H100 SXM", [989.4, 989.4, 494.7, 1978.9]),
    ("H100 PCIe", [756.0, 756.0, 378.0, 1513.0]),
    ("H200", [989.4, 989.4, 494.7, 1978.9]),
    ("B200", [2250.0, 2250.0, 1100.0, 4500.0]),
    ("L4", [121.0, 121.0, 60.0, 242.5]),
    ("L40S", [362.05, 362.05, 183.0, 733.0]),
    ("MI300X", [1307.4, 1307.4, 653.7, 2614.9]),
];

/// The GPUs of the table, as named in it.
pub fn gpus() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|(g, _)| *g)
}

/// Canonical table name of a GPU name as drivers and users write it ("NVIDIA H100 80GB HBM3",
/// "h100-pcie", "AMD Instinct MI300X"); None if the table does not know it.
pub fn canonical_gpu(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase().replace(['-', '_'], " ");
    let has = |w: &str| n.split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == w) || n.contains(w);
    Some(if has("mi300x") {
        "MI300X"
    } else if has("b200") {
        "B200"
    } else if has("h200") {
        "H200"
    } else if n.contains("h100") && (n.contains("pcie") || n.contains("nvl")) {
        "H100 PCIe"
    } else if n.contains("h100") {
        "H100 SXM"
    } else if n.contains("a100") {
        "A100"
    } else if n.contains("l40s") {
        "L40S"
    } else if n.split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == "l4") {
        "L4"
    } else {
        return None;
    })
}

/// Peak dense FLOP/s of `gpu` for `dtype` (bf16, fp16, tf32, fp8), or None if unknown.
pub fn peak_flops(gpu: &str, dtype: &str) -> Option<f64> {
    let g = canonical_gpu(gpu)?;
    let d = DTYPES.iter().position(|d| d.eq_ignore_ascii_case(dtype.trim()))?;
    let tflops = TABLE.iter().find(|(name, _)| *name == g)?.1[d];
    (tflops > 0.0).then_some(tflops * 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_drivers_write_them() {
        assert_eq!(peak_flops("NVIDIA H100 80GB HBM3", "bf16"), Some(989.4e12));
        assert_eq!(peak_flops("NVIDIA H100 PCIe", "fp8"), Some(1513e12));
        assert_eq!(peak_flops("NVIDIA L4", "fp16"), Some(121e12));
        assert_eq!(peak_flops("NVIDIA L40S", "bf16"), Some(362.05e12));
        assert_eq!(peak_flops("AMD Instinct MI300X", "tf32"), Some(653.7e12));
        assert_eq!(peak_flops("A100-SXM4-80GB", "fp8"), None);
        assert_eq!(peak_flops("GeForce GTX 1080", "bf16"), None);
    }
}
