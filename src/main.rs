use clap::Parser;
use s3vol::cli::{Cli, Command, expand_dash_o};
use std::process::ExitCode;

mod check;
mod commands;
mod demo;

fn main() -> ExitCode {
    let args = match expand_dash_o(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("s3vol: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Mount(args) => s3vol::mount::run(args),
        Command::Unmount(args) => commands::unmount(&args),
        Command::Status(args) => commands::status(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Check(args) => {
            let _ = s3vol::logging::init(s3vol::logging::LogTarget::Stderr, false);
            check::run(&args)
        }
    }
}
