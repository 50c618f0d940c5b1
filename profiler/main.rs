//! The `ghostprof` binary: everything lives in the library; see `ghostprof --help`.

fn main() -> std::process::ExitCode {
    ghostprof::cli::main()
}
