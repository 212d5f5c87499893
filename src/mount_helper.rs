//! `mount.s3vol`: mount(8) runs `/sbin/mount.s3vol SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`
//! for `mount -t s3vol` and for fstab lines of type s3vol. This turns that convention into
//! the arguments of `s3vol mount`, checks them with the same clap definition, and mounts.

use crate::cli::{Cli, Command, MountArgs, split_options};
use clap::Parser;
use clap::error::{ContextKind, ErrorKind};
use std::path::Path;
use std::process::ExitCode;

/// The name mount(8) looks for: `/sbin/mount.TYPE`.
pub const HELPER_NAME: &str = "mount.s3vol";

const USAGE: &str = "usage: mount.s3vol SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]";

/// Options meant for mount(8), systemd or the fstab reader, not for the filesystem.
const DROPPED: &[&str] = &[
    "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults",
];
/// `user=NAME` is what mount(8) passes for a user mount of a `user` fstab line.
const DROPPED_PREFIXES: &[&str] = &["x-systemd.", "comment=", "user="];
/// Flags the kernel enforces; `--kernel-option` hands them to the FUSE mount.
const KERNEL_FLAGS: &[&str] = &["nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime"];

/// One invocation of the helper, decoded.
#[derive(Debug)]
pub struct HelperCall {
    /// The equivalent `s3vol mount ...` command line.
    pub argv: Vec<String>,
    pub mount: MountArgs,
    /// `-f`: check everything, print what would run, do not mount.
    pub fake: bool,
    /// `-v`: print the command line before mounting.
    pub verbose: bool,
}

pub fn invoked_as_helper(argv0: &str) -> bool {
    Path::new(argv0).file_name().is_some_and(|name| name == HELPER_NAME)
}

/// Decodes the helper's arguments (without the program name). `-s` (sloppy) and `-n` (no
/// mtab) are accepted and change nothing: s3vol keeps no mtab, and a misspelt option in
/// fstab must fail rather than mount with other semantics.
pub fn helper_args(args: &[String]) -> Result<HelperCall, String> {
    let (mut positional, mut options) = (Vec::new(), Vec::new());
    let (mut fake, mut verbose) = (false, false);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-o" {
            options.extend(split_options(iter.next().ok_or("-o needs a value")?));
        } else if arg == "-t" {
            // mount(8) names the type (`s3vol` or `fuse.s3vol`): it is this helper's own.
            iter.next().ok_or("-t needs a value")?;
        } else if let Some(list) = arg.strip_prefix("-o") {
            options.extend(split_options(list));
        } else if let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty() && !f.starts_with('-')) {
            for flag in flags.chars() {
                match flag {
                    'f' => fake = true,
                    'v' => verbose = true,
                    's' | 'n' => {}
                    other => return Err(format!("unknown flag '-{other}'; {USAGE}")),
                }
            }
        } else if arg.starts_with('-') {
            return Err(format!("unknown flag '{arg}'; {USAGE}"));
        } else {
            positional.push(arg.clone());
        }
    }
    let [source, mountpoint] = <[String; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    let mut argv = vec!["s3vol".to_string(), "mount".to_string(), source, mountpoint];
    argv.extend(mount_flags(&options));
    let cli = Cli::try_parse_from(&argv).map_err(option_error)?;
    let Command::Mount(mount) = cli.command else {
        unreachable!("argv names the mount subcommand")
    };
    Ok(HelperCall {
        argv,
        mount,
        fake,
        verbose,
    })
}

/// fstab options as `s3vol mount` flags. `ro`/`rw` are folded so the last one wins, as in
/// mount(8) (fstab's options come before the command line's).
fn mount_flags(options: &[String]) -> Vec<String> {
    let mut read_only = false;
    let mut flags = Vec::new();
    for option in options.iter().map(String::as_str).filter(|o| !o.is_empty()) {
        match option {
            "ro" | "read-only" => read_only = true,
            "rw" => read_only = false,
            o if DROPPED.contains(&o) || DROPPED_PREFIXES.iter().any(|p| o.starts_with(p)) => {}
            o if KERNEL_FLAGS.contains(&o) => flags.push(format!("--kernel-option={o}")),
            o => flags.push(format!("--{o}")),
        }
    }
    if read_only {
        flags.push("--read-only".into());
    }
    flags
}

/// clap's error as one line that names the option the way fstab spells it.
fn option_error(error: clap::Error) -> String {
    let unknown = match error.kind() {
        ErrorKind::DisplayHelp => Some("help".to_string()),
        ErrorKind::UnknownArgument => error.get(ContextKind::InvalidArg).map(|arg| arg.to_string()),
        _ => None,
    };
    if let Some(arg) = unknown {
        let name = arg.trim_start_matches("--");
        return format!(
            "unknown option '{}'",
            name.split_once('=').map_or(name, |(name, _)| name)
        );
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").replace("'--", "'")
}

/// Runs the helper: exit 0 once the mount is live (or, with `-f`, once everything but the
/// mount checked out), 1 with the reason on stderr otherwise.
pub fn run(args: &[String]) -> ExitCode {
    let call = match helper_args(args) {
        Ok(call) => call,
        Err(message) => {
            eprintln!("{HELPER_NAME}: {message}");
            return ExitCode::FAILURE;
        }
    };
    let command = shell_words(&call.argv);
    if call.fake {
        return match dry_run(&call.mount) {
            Ok(()) => {
                println!("would run: {command}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{HELPER_NAME}: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if call.verbose {
        eprintln!("{HELPER_NAME}: running {command}");
    }
    crate::mount::run(call.mount)
}

/// What `s3vol mount` checks before it daemonizes, without mounting.
fn dry_run(mount: &MountArgs) -> Result<(), String> {
    mount.connect.resolve()?;
    mount.connect.settings()?;
    crate::mount::check_mountpoint(&mount.mountpoint).map(|_| ())
}

/// The command line as a shell would take it back (for -f and -v output).
fn shell_words(argv: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c);
    let quoted: Vec<String> = argv
        .iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(plain) {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::KernelOption;

    fn helper(args: &str) -> Result<HelperCall, String> {
        helper_args(&args.split(' ').map(String::from).collect::<Vec<_>>())
    }

    /// The `s3vol mount` flags a helper call turns into (after SOURCE and MOUNTPOINT).
    fn flags(args: &str) -> Vec<String> {
        helper(args).unwrap_or_else(|e| panic!("{args}: {e}")).argv[4..].to_vec()
    }

    #[test]
    fn options_become_mount_flags() {
        let cases: &[(&str, &[&str])] = &[
            ("s3://b /mnt", &[]),
            ("s3://b /mnt -o region=x,allow-other", &["--region=x", "--allow-other"]),
            ("s3://b /mnt -oregion=x", &["--region=x"]),
            ("s3://b /mnt -o region=a -o profile=p", &["--region=a", "--profile=p"]),
            ("-v -o region=x s3://b /mnt", &["--region=x"]),
            (
                r"s3://b /mnt -o endpoint-url=http://h/a\,b,region=r",
                &["--endpoint-url=http://h/a,b", "--region=r"],
            ),
            (r"s3://b /mnt -o log-file=/var/log/a\\b", &[r"--log-file=/var/log/a\b"]),
            (
                "s3://b /mnt -o credentials-file=/etc/s3vol/vol.cred",
                &["--credentials-file=/etc/s3vol/vol.cred"],
            ),
            ("s3://b /mnt -o ro", &["--read-only"]),
            ("s3://b /mnt -o read-only", &["--read-only"]),
            ("s3://b /mnt -o rw", &[]),
            ("s3://b /mnt -o ro,rw", &[]),
            ("s3://b /mnt -o rw,ro", &["--read-only"]),
            (
                "s3://b /mnt -o nosuid,dev,noexec,atime",
                &[
                    "--kernel-option=nosuid",
                    "--kernel-option=dev",
                    "--kernel-option=noexec",
                    "--kernel-option=atime",
                ],
            ),
            (
                "s3://b /mnt -o _netdev,nofail,noauto,auto,user,users,nouser,defaults,user=alice",
                &[],
            ),
            (
                "s3://b /mnt -o x-systemd.automount,x-systemd.idle-timeout=60,comment=a=b",
                &[],
            ),
            ("s3://b /mnt -o ,,region=x,", &["--region=x"]),
            ("s3://b /mnt -s -n -o region=x", &["--region=x"]),
            ("s3://b /mnt -t s3vol -o region=x", &["--region=x"]),
        ];
        for (args, expected) in cases {
            assert_eq!(flags(args), *expected, "{args}");
        }
    }

    #[test]
    fn positionals_and_flags() {
        let call = helper("runpod://EU-RO-1/vol /mnt/vol -f -v -o allow-other").unwrap();
        assert_eq!(call.argv[..4], ["s3vol", "mount", "runpod://EU-RO-1/vol", "/mnt/vol"]);
        assert!(call.fake && call.verbose);
        assert_eq!(call.mount.connect.source, "runpod://EU-RO-1/vol");
        assert_eq!(call.mount.mountpoint, Path::new("/mnt/vol"));
        assert!(call.mount.options.allow_other && !call.mount.options.foreground);
        let call = helper("s3://b /mnt -sfnv").unwrap();
        assert!(call.fake && call.verbose);
        let call = helper("s3://b /mnt").unwrap();
        assert!(!call.fake && !call.verbose);
    }

    #[test]
    fn parsed_options_reach_mount_args() {
        let call =
            helper("s3://b /mnt -o ro,noexec,suid,memory-limit=2GiB,force-path-style,metrics-addr=9100").unwrap();
        assert!(call.mount.options.read_only && call.mount.connect.force_path_style);
        assert_eq!(call.mount.options.memory_limit, 2 << 30);
        assert_eq!(call.mount.options.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(
            call.mount.options.kernel_option,
            [KernelOption::Noexec, KernelOption::Suid]
        );
        let call = helper(
            "s3://b /mnt -o shared-cache=s3://tier/team,shared-cache-endpoint-url=http://10.0.0.5:9000,shared-cache-read-only",
        )
        .unwrap();
        let shared = &call.mount.options.shared;
        assert_eq!(shared.shared_cache.as_deref(), Some("s3://tier/team"));
        assert_eq!(
            shared.shared_cache_endpoint_url.as_deref(),
            Some("http://10.0.0.5:9000")
        );
        assert!(shared.shared_cache_read_only && !shared.shared_cache_confirm_origin);
        assert!(
            helper("s3://b /mnt -o shared-cache-read-only").is_err(),
            "needs shared-cache"
        );
    }

    #[test]
    fn rejected_forms_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "usage:"),
            ("s3://b", "usage:"),
            ("s3://b /mnt extra", "usage:"),
            ("s3://b /mnt -o", "-o needs a value"),
            ("s3://b /mnt -t", "-t needs a value"),
            ("s3://b /mnt -x", "unknown flag '-x'"),
            ("s3://b /mnt -fx", "unknown flag '-x'"),
            ("s3://b /mnt --verbose", "unknown flag '--verbose'"),
            ("s3://b /mnt -N /proc/1/ns/mnt", "unknown flag '-N'"),
            ("s3://b /mnt -o bogus", "unknown option 'bogus'"),
            ("s3://b /mnt -o region=x,bogus=1", "unknown option 'bogus'"),
            ("s3://b /mnt -o help", "unknown option 'help'"),
            ("s3://b /mnt -o version", "unknown option 'version'"),
            ("s3://b /mnt -o sync", "unknown option 'sync'"),
            ("s3://b /mnt -o region", "region"),
            ("s3://b /mnt -o allow-other=yes", "allow-other"),
            ("s3://b /mnt -o memory-limit=lots", "memory-limit"),
            ("s3://b /mnt -o region=a,region=b", "region"),
            ("s3://b /mnt -o kernel-option=nosync", "kernel-option"),
        ];
        for (args, expected) in cases {
            let args: Vec<String> = args.split(' ').filter(|a| !a.is_empty()).map(String::from).collect();
            let error = helper_args(&args).expect_err(&format!("{args:?} must be rejected"));
            assert!(error.contains(expected), "{args:?}: {error}");
            assert!(!error.contains('\n'), "{args:?}: one line: {error}");
        }
    }

    #[test]
    fn kernel_flags_override_the_defaults() {
        use crate::mount::kernel_flags;
        use fuser::MountOption::{Dev, NoAtime, NoDev, NoExec, NoSuid, Suid};
        assert_eq!(kernel_flags(&[]), [NoAtime, NoDev, NoSuid]);
        assert_eq!(
            kernel_flags(&[KernelOption::Suid, KernelOption::Noexec]),
            [NoAtime, NoDev, Suid, NoExec]
        );
        let last_wins = [
            KernelOption::Exec,
            KernelOption::Noexec,
            KernelOption::Nodev,
            KernelOption::Dev,
        ];
        assert_eq!(kernel_flags(&last_wins), [NoAtime, NoSuid, NoExec, Dev]);
    }

    #[test]
    fn helper_name_is_recognised_by_basename() {
        assert!(invoked_as_helper("/sbin/mount.s3vol"));
        assert!(invoked_as_helper("mount.s3vol"));
        assert!(!invoked_as_helper("/usr/bin/s3vol"));
        assert!(!invoked_as_helper("/sbin/mount.s3vol.bak"));
    }

    #[test]
    fn command_lines_are_shown_as_a_shell_reads_them() {
        let argv = ["s3vol", "mount", "s3://b", "/mnt/my vol", "--region=it's"].map(String::from);
        assert_eq!(
            shell_words(&argv),
            r"s3vol mount s3://b '/mnt/my vol' '--region=it'\''s'"
        );
    }
}
