//! os-operator: see `operator::cli`.

fn main() -> std::process::ExitCode {
    operator::cli::main()
}
