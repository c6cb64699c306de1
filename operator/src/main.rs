//! os-operator. For now it only prints the CRDs; the controller comes with the rest of issue 6.

use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "\
usage: os-operator <command>

commands:
  crds      print the OS and OSInstance CustomResourceDefinitions as YAML
            (the content of deploy/crds.yaml)
  --help    print this help

The controller is not implemented yet: os-operator does not run a rollout.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["crds"] => print_crds(),
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn print_crds() -> ExitCode {
    let yaml = match operator::crd::crds_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("os-operator: cannot render the CRDs as YAML: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(yaml.as_bytes()) {
        eprintln!("os-operator: cannot write the CRDs to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
