fn main() {
    std::process::exit(bootctl::cli::main_with_args(
        std::env::args_os().skip(1).collect(),
    ));
}
