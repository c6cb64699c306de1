//! `os-proxy` linked into this crate so the cluster simulation builds it with the tests.

fn main() -> std::process::ExitCode {
    proxy::cli::main()
}
