//! mount(8) -> /sbin/mount.s3vol -> `s3vol mount`, end to end against the in-process S3
//! server: `mount -t s3vol`, an fstab line through `mount -a -T FILE`, and the refusals.
//! Needs root (to link /sbin/mount.s3vol and to mount) and fuse3.

use crate::common;
use s3vol::server::{RunningServer, ServerConfig, start_blocking};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, PoisonError};

const HELPER: &str = "/sbin/mount.s3vol";
const BUCKET: &str = "bucket";
const GREETING: &str = "hello through mount(8)\n";

/// The tests share /sbin/mount.s3vol, so they take turns.
static HELPER_IN_USE: Mutex<()> = Mutex::new(());

/// Points /sbin/mount.s3vol at the binary under test while it lives, and removes the link
/// on drop if it made it.
struct HelperLink {
    _turn: MutexGuard<'static, ()>,
    created: bool,
}

impl HelperLink {
    fn install() -> HelperLink {
        let turn = HELPER_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        let binary = Path::new(env!("CARGO_BIN_EXE_s3vol"));
        match std::fs::read_link(HELPER) {
            Ok(target) if target == binary => {
                return HelperLink {
                    _turn: turn,
                    created: false,
                };
            }
            // Left behind by an interrupted run of these tests (maybe of another profile).
            Ok(target) if target.starts_with(env!("CARGO_MANIFEST_DIR")) => {
                std::fs::remove_file(HELPER).expect("remove the stale test link")
            }
            Ok(target) => panic!(
                "{HELPER} points at {}, not at the binary under test; remove it to run these tests",
                target.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                panic!("{HELPER} exists and is not a link ({e}); remove it to run these tests")
            }
        }
        std::os::unix::fs::symlink(binary, HELPER)
            .unwrap_or_else(|e| panic!("cannot link {HELPER} (these tests run as root): {e}"));
        HelperLink {
            _turn: turn,
            created: true,
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(HELPER);
        }
    }
}

/// Detaches the mount on drop, also when the test panicked.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if mount_options(self.0).is_some() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(self.0).status();
        }
    }
}

/// A bucket holding `hello.txt`, a credentials file for it, an empty mountpoint and a log file.
struct Fixture {
    server: RunningServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let server = start_blocking(ServerConfig::default());
        server.backend().create_bucket(BUCKET);
        server
            .backend()
            .put_object(BUCKET, "hello.txt", GREETING, &[])
            .expect("put hello.txt");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
        let fixture = Fixture { server, dir };
        let credentials = format!("{}:{}\n", fixture.server.access_key, fixture.server.secret_key);
        std::fs::write(fixture.credentials(), credentials).expect("credentials file");
        fixture.set_credentials_mode(0o600);
        fixture
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("vol.cred")
    }

    fn set_credentials_mode(&self, mode: u32) {
        let permissions = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(self.credentials(), permissions).expect("chmod credentials");
    }

    /// fstab-style options that reach the in-process server, plus `extra`.
    fn options(&self, extra: &str) -> String {
        format!(
            "endpoint-url={},force-path-style,region=us-east-1,credentials-file={},log-file={},{extra}",
            self.server.endpoint,
            self.credentials().display(),
            self.dir.path().join("s3vol.log").display(),
        )
    }

    /// `mount ARGS`, with the daemon's log in the message when it failed.
    fn mount(&self, args: &[&str]) -> Output {
        let output = Command::new("mount").args(args).output().expect("run mount(8)");
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("s3vol.log")).unwrap_or_default();
            eprintln!(
                "mount {args:?}: {}\n{}\ndaemon log:\n{log}",
                output.status,
                stderr(&output)
            );
        }
        output
    }

    fn read_hello(&self) -> String {
        std::fs::read_to_string(self.mountpoint().join("hello.txt")).expect("read through the mount")
    }

    /// `s3vol unmount`, which flushes, unmounts and waits for the daemon to exit.
    fn unmount(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .arg("unmount")
            .arg(self.mountpoint())
            .output()
            .expect("run s3vol unmount");
        assert!(output.status.success(), "s3vol unmount: {}", stderr(&output));
        assert_eq!(
            mount_options(&self.mountpoint()),
            None,
            "still mounted after s3vol unmount"
        );
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The source and per-mount options of whatever FUSE filesystem is mounted on `mountpoint`.
fn mount_options(mountpoint: &Path) -> Option<(String, Vec<String>)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if Path::new(fields.get(4)?) != mountpoint {
            return None;
        }
        // After "-": the fstype ("fuse", or "fuse.s3vol" when fusermount3 mounted it), the source.
        let separator = fields.iter().position(|f| *f == "-")?;
        fields.get(separator + 1)?.starts_with("fuse").then_some(())?;
        let options = fields[5].split(',').map(String::from).collect();
        Some((fields.get(separator + 2)?.to_string(), options))
    })
}

fn assert_mounted_with(mountpoint: &Path, flags: &[&str]) {
    let (source, options) = mount_options(mountpoint).expect("mounted");
    assert_eq!(source, format!("s3://{BUCKET}"));
    for flag in flags {
        assert!(options.iter().any(|o| o == flag), "{flag} missing from {options:?}");
    }
}

#[test]
fn mount_t_s3vol_mounts_through_the_helper() {
    let _turn = common::shared();
    let _link = HelperLink::install();
    let fixture = Fixture::new();
    let mountpoint = fixture.mountpoint();
    let mountpoint_arg = mountpoint.to_str().expect("utf-8 path");
    let options = fixture.options("_netdev,nofail,noexec");
    let _unmount = Unmount(&mountpoint);

    let output = fixture.mount(&["-t", "s3vol", "s3://bucket", mountpoint_arg, "-o", &options]);
    assert!(output.status.success(), "mount -t s3vol failed");
    assert_mounted_with(&mountpoint, &["rw", "noexec", "nosuid", "nodev", "noatime"]);
    assert_eq!(fixture.read_hello(), GREETING);
    fixture.unmount();
}

#[test]
fn an_fstab_line_mounts_with_mount_a() {
    let _turn = common::shared();
    let _link = HelperLink::install();
    let fixture = Fixture::new();
    let mountpoint = fixture.mountpoint();
    let fstab = fixture.dir.path().join("fstab");
    let options = fixture.options("_netdev,nofail,ro,x-systemd.automount,comment=s3vol");
    let line = format!("s3://{BUCKET} {} s3vol {options} 0 0\n", mountpoint.display());
    std::fs::write(&fstab, format!("# test fstab\n{line}")).expect("write fstab");
    let _unmount = Unmount(&mountpoint);

    let output = fixture.mount(&["-a", "-T", fstab.to_str().expect("utf-8 path")]);
    assert!(output.status.success(), "mount -a -T failed");
    assert_mounted_with(&mountpoint, &["ro", "nosuid", "nodev"]);
    assert_eq!(fixture.read_hello(), GREETING);
    let write = std::fs::write(mountpoint.join("new.txt"), "x").expect_err("read-only mount");
    assert_eq!(write.raw_os_error(), Some(libc::EROFS));
    fixture.unmount();
}

#[test]
fn mount_f_checks_and_prints_without_mounting() {
    let _turn = common::shared();
    let _link = HelperLink::install();
    let fixture = Fixture::new();
    let mountpoint = fixture.mountpoint();
    let options = fixture.options("ro");
    let _unmount = Unmount(&mountpoint);

    let output = fixture.mount(&[
        "-f",
        "-t",
        "s3vol",
        "s3://bucket",
        mountpoint.to_str().unwrap(),
        "-o",
        &options,
    ]);
    assert!(output.status.success(), "mount -f failed");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("would run: s3vol mount s3://bucket"), "{printed}");
    assert!(printed.contains("--read-only"), "{printed}");
    assert_eq!(mount_options(&mountpoint), None, "-f must not mount");
}

#[test]
fn a_world_readable_credentials_file_is_refused() {
    let _turn = common::shared();
    let _link = HelperLink::install();
    let fixture = Fixture::new();
    fixture.set_credentials_mode(0o644);
    let mountpoint = fixture.mountpoint();
    let options = fixture.options("");
    let _unmount = Unmount(&mountpoint);

    let output = fixture.mount(&[
        "-t",
        "s3vol",
        "s3://bucket",
        mountpoint.to_str().unwrap(),
        "-o",
        &options,
    ]);
    assert!(
        !output.status.success(),
        "must refuse a world-readable credentials file"
    );
    let message = stderr(&output);
    let expected = format!(
        "credentials file {} is readable by every user",
        fixture.credentials().display()
    );
    assert!(message.contains(&expected), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
    assert_eq!(mount_options(&mountpoint), None);
}

#[test]
fn an_unknown_option_fails_the_mount_and_is_named() {
    let _turn = common::shared();
    let _link = HelperLink::install();
    let fixture = Fixture::new();
    let mountpoint = fixture.mountpoint();
    let options = fixture.options("cache-sise=1G");
    let _unmount = Unmount(&mountpoint);

    let output = fixture.mount(&[
        "-t",
        "s3vol",
        "s3://bucket",
        mountpoint.to_str().unwrap(),
        "-o",
        &options,
    ]);
    assert!(!output.status.success(), "an unknown option must fail the mount");
    assert!(
        stderr(&output).contains("mount.s3vol: unknown option 'cache-sise'"),
        "{}",
        stderr(&output)
    );
    assert_eq!(mount_options(&mountpoint), None);
}
