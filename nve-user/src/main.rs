use clap::Parser;

fn main() -> std::process::ExitCode {
    nve_user::cli::main(nve_user::cli::Cli::parse())
}
