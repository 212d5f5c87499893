//! The .deb: built by cargo-deb from the binary under test, unpacked with dpkg-deb into a
//! temporary root, and checked file by file. Needs cargo-deb (`cargo install --locked
//! cargo-deb`; packaging/build.sh installs it) and dpkg-deb.

use crate::common;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{shown}: {}\n{stderr}", output.status);
    output
}

/// Packages the binary under test: cargo-deb takes `target/release/s3vol` from
/// CARGO_TARGET_DIR, so a private target dir holding a copy keeps the real one untouched
/// (and unlocked) whichever profile the tests were built with.
fn build_deb(work: &Path) -> PathBuf {
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(has_cargo_deb, "cargo-deb is missing: cargo install --locked cargo-deb");
    let release = work.join("target/release");
    std::fs::create_dir_all(&release).expect("private target dir");
    std::fs::copy(env!("CARGO_BIN_EXE_s3vol"), release.join("s3vol")).expect("copy the binary");
    let deb = work.join("s3vol.deb");
    run(Command::new("cargo")
        .args(["deb", "--no-build", "--strip", "--fast", "--quiet", "--output"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .current_dir(CRATE_DIR));
    deb
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn assert_same_file(installed: &Path, source: &str) {
    let installed_text = std::fs::read_to_string(installed).unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
    let source_text = std::fs::read_to_string(Path::new(CRATE_DIR).join(source)).expect("source file");
    assert_eq!(
        installed_text,
        source_text,
        "{} differs from {source}",
        installed.display()
    );
    assert_eq!(mode(installed), 0o644, "{}", installed.display());
}

#[test]
fn the_deb_installs_the_binary_the_helper_link_units_and_docs() {
    let _turn = common::shared();
    let work = tempfile::tempdir().expect("temp dir");
    let deb = build_deb(work.path());
    let root = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    let binary = root.join("usr/bin/s3vol");
    assert_eq!(mode(&binary), 0o755);
    let version = run(Command::new(&binary).arg("--version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("s3vol "));

    // Relative, so it resolves inside whatever root the package is unpacked to.
    let helper = root.join("usr/sbin/mount.s3vol");
    assert_eq!(
        std::fs::read_link(&helper).expect("mount.s3vol is a symlink"),
        Path::new("../bin/s3vol")
    );
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mountpoint");
    let fake = run(Command::new(&helper)
        .arg("s3://bucket")
        .arg(&mountpoint)
        .args(["-f", "-o", "ro,region=x"]));
    let printed = String::from_utf8_lossy(&fake.stdout);
    assert!(printed.starts_with("would run: s3vol mount s3://bucket"), "{printed}");

    assert_same_file(
        &root.join("lib/systemd/system/s3vol@.service"),
        "systemd/s3vol@.service",
    );
    let examples = root.join("usr/share/doc/s3vol/examples");
    assert_same_file(&examples.join("mnt-vol.mount"), "systemd/mnt-vol.mount");
    assert_same_file(&examples.join("mnt-vol.automount"), "systemd/mnt-vol.automount");
    assert_same_file(&root.join("usr/share/doc/s3vol/README.md"), "README.md");

    let depends = run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg("Depends"));
    let depends = String::from_utf8_lossy(&depends.stdout);
    assert!(depends.split(',').any(|d| d.trim() == "fuse3"), "Depends: {depends}");
}

#[test]
fn the_maintainer_scripts_link_sbin_only_without_merged_usr() {
    let _turn = common::shared();
    let work = tempfile::tempdir().expect("temp dir");
    let deb = build_deb(work.path());
    let control = work.path().join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let script = |root: &Path, name: &str, action: &str| {
        run(Command::new("sh")
            .arg(control.join(name))
            .arg(action)
            .env("DPKG_ROOT", root));
    };

    let split = work.path().join("split-usr");
    std::fs::create_dir_all(split.join("sbin")).expect("split /sbin");
    script(&split, "postinst", "configure");
    let link = split.join("sbin/mount.s3vol");
    assert_eq!(
        std::fs::read_link(&link).expect("/sbin link"),
        Path::new("/usr/sbin/mount.s3vol")
    );
    script(&split, "postinst", "configure");
    script(&split, "postrm", "remove");
    assert!(std::fs::symlink_metadata(&link).is_err(), "postrm must remove the link");

    let merged = work.path().join("merged-usr");
    std::fs::create_dir_all(merged.join("usr/sbin")).expect("/usr/sbin");
    std::os::unix::fs::symlink("usr/sbin", merged.join("sbin")).expect("/sbin -> usr/sbin");
    script(&merged, "postinst", "configure");
    assert!(
        std::fs::read_dir(merged.join("usr/sbin"))
            .expect("read /usr/sbin")
            .next()
            .is_none()
    );
    script(&merged, "postrm", "remove");
}

/// `s3vol@vol.service` from the unit template, in `dir`, with the installed binary's path
/// replaced by the binary under test: `systemd-analyze verify` checks that every command
/// exists. Needs systemd-analyze (Debian: package systemd; tests/setup installs it); it
/// runs without systemd as PID 1.
fn unit_instance(dir: &Path) -> PathBuf {
    let template = std::fs::read_to_string(Path::new(CRATE_DIR).join("systemd/s3vol@.service")).expect("unit template");
    let unit = dir.join("s3vol@vol.service");
    std::fs::write(&unit, template.replace("/usr/bin/s3vol", env!("CARGO_BIN_EXE_s3vol"))).expect("write the unit");
    unit
}

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let _turn = common::shared();
    let work = tempfile::tempdir().expect("temp dir");
    let unit = unit_instance(work.path());
    let output = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    // Unknown or misspelt directives are only warnings: any output is a mistake.
    let said = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

/// The sandbox keeps the mount visible to the host: no directive that gives the service
/// a mount namespace of its own (a FUSE mount made inside one never propagates out), and
/// what those directives would forbid is kept out by capabilities and system calls, so
/// systemd's exposure score stays low.
#[test]
fn the_service_unit_is_sandboxed_without_a_mount_namespace() {
    let _turn = common::shared();
    const NAMESPACING: &[&str] = &[
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateUsers",
        "PrivateNetwork",
        "PrivateIPC",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "ExecPaths",
        "NoExecPaths",
        "BindPaths",
        "BindReadOnlyPaths",
        "TemporaryFileSystem",
        "MountFlags",
        "RootDirectory",
        "RootImage",
    ];
    let template = std::fs::read_to_string(Path::new(CRATE_DIR).join("systemd/s3vol@.service")).expect("unit template");
    for line in template.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let key = line.split('=').next().unwrap_or_default();
        assert!(
            !NAMESPACING.contains(&key),
            "{line}: a mount namespace would hide the FUSE mount from the host"
        );
    }

    let work = tempfile::tempdir().expect("temp dir");
    let unit = unit_instance(work.path());
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    let report = String::from_utf8_lossy(&output.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for s3vol@vol.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // 9.6 without any sandboxing; 4.0 with what FUSE allows.
    assert!(score <= 4.0, "exposure {score}:\n{report}");
}
