use clap::Parser;
use s3vol::cli::{CacheCommand, Cli, Command, SharedCacheCommand, expand_dash_o};
use std::process::ExitCode;

mod check;
mod commands;
mod demo;
mod status_watch;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // mount(8) runs /sbin/mount.s3vol, a link to this binary, with its own convention.
    if argv
        .first()
        .is_some_and(|name| s3vol::mount_helper::invoked_as_helper(name))
    {
        return s3vol::mount_helper::run(&argv[1..]);
    }
    let args = match expand_dash_o(argv) {
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
        Command::Sync(args) => commands::sync(&args),
        Command::Discard(args) => commands::discard(&args),
        Command::Status(args) => commands::status(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Cache(CacheCommand::Clear { cache_dir }) => commands::cache_clear(cache_dir),
        Command::Check(args) => {
            let _ = s3vol::logging::init(s3vol::logging::LogTarget::Stderr, false);
            check::run(&args)
        }
        Command::MountHelper(args) => s3vol::mount_helper::run(&args.args),
        Command::SharedCache(SharedCacheCommand::Prune(args)) => commands::shared_cache_prune(&args),
    }
}
