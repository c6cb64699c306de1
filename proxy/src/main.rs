//! `os-proxy`: the node side of OS rollouts (see the `proxy` library).

fn main() -> std::process::ExitCode {
    proxy::cli::main()
}
