//! The `ghostprof` binary: everything lives in the library; see `ghostprof --help`.

fn main() -> std::process::ExitCode {
    // The PM decoder (a child ghostprof runs as the job's user: collect/pmdecode.rs).
    if let Some(code) = ghostprof::collect::pmdecode::decoder_main() {
        return code;
    }
    ghostprof::cli::main()
}
