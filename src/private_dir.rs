//! Directories only this user may use: the cache directory (blocks of private objects,
//! writes not yet uploaded, the crash journal) and the control socket's directory. Created
//! 0700 whatever the umask; an existing one is used only if it is a directory owned by
//! this user that nobody else can write to. One that others may only read or enter (made
//! by an older s3vol under the usual umask 022) is made private, and the caller says so.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// How an existing directory is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A symbolic link to a directory of ours is fine (a `--cache-dir` the user chose).
    Follow,
    /// Only a real directory (lstat): the socket directory may sit in /tmp.
    Refuse,
}

/// What a directory is for and where else the user can point s3vol, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Purpose {
    pub what: &'static str,
    pub elsewhere: &'static str,
}

/// The verdict on an existing directory.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Private,
    /// Ours, readable or searchable by others, writable by nobody else: its mode.
    TooOpen(u32),
    Refused(String),
}

/// Judges a directory from its (l)stat: pure, so every case is tested without a second user.
fn judge(dir: &Path, purpose: Purpose, meta: &std::fs::Metadata, me: u32) -> Verdict {
    let (shown, what, elsewhere) = (dir.display(), purpose.what, purpose.elsewhere);
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() {
        return Verdict::Refused(format!(
            "{what} {shown} is a symbolic link; s3vol uses only a real directory there: remove it, or {elsewhere}"
        ));
    }
    if !meta.is_dir() {
        return Verdict::Refused(format!("{what} {shown} is not a directory: remove it, or {elsewhere}"));
    }
    if meta.uid() != me {
        return Verdict::Refused(format!(
            "{what} {shown} belongs to uid {} (mode {mode:04o}), not to this user (uid {me}): another user could read or change what s3vol keeps there; {elsewhere}",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Verdict::Refused(format!(
            "{what} {shown} has mode {mode:04o}: other users can write to it; make it private (chmod 700 {shown}), or {elsewhere}"
        ));
    }
    if mode & 0o077 != 0 {
        return Verdict::TooOpen(mode);
    }
    Verdict::Private
}

fn stat(dir: &Path, link: Link) -> std::io::Result<std::fs::Metadata> {
    match link {
        Link::Follow => std::fs::metadata(dir),
        Link::Refuse => std::fs::symlink_metadata(dir),
    }
}

/// Creates `dir` with mode 0700 (its missing parents with the usual modes), or checks the
/// existing one. Returns the mode it had when it was ours but readable by others and was
/// made private; the error is a message for the user.
pub fn create(dir: &Path, purpose: Purpose, link: Link) -> Result<Option<u32>, String> {
    let failed = |e: std::io::Error| format!("{} {}: {e}", purpose.what, dir.display());
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(failed(e)),
        _ => {}
    }
    let meta = stat(dir, link).map_err(failed)?;
    match judge(dir, purpose, &meta, nix::unistd::geteuid().as_raw()) {
        Verdict::Private => Ok(None),
        Verdict::Refused(message) => Err(message),
        Verdict::TooOpen(mode) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
            Ok(Some(mode))
        }
    }
}

/// Checks an existing directory without changing it (a client looking for sockets):
/// `Ok(false)` if there is none; one others may read but not write is fine to trust.
pub fn check(dir: &Path, purpose: Purpose, link: Link) -> Result<bool, String> {
    let meta = match stat(dir, link) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{} {}: {e}", purpose.what, dir.display())),
    };
    match judge(dir, purpose, &meta, nix::unistd::geteuid().as_raw()) {
        Verdict::Refused(message) => Err(message),
        Verdict::Private | Verdict::TooOpen(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Purpose = Purpose {
        what: "test directory",
        elsewhere: "choose another",
    };

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_new_directory_is_private_and_a_readable_one_of_ours_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("parent/new");
        assert_eq!(create(&dir, TEST, Link::Refuse), Ok(None));
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(create(&dir, TEST, Link::Follow), Ok(Some(0o755)));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(check(&tmp.path().join("missing"), TEST, Link::Refuse), Ok(false));
    }

    #[test]
    fn writable_by_others_is_refused_with_the_path_mode_and_remedy() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let message = create(tmp.path(), TEST, Link::Follow).unwrap_err();
        let shown = tmp.path().display().to_string();
        assert!(
            message.contains(&shown) && message.contains("0777") && message.contains("chmod 700"),
            "{message}"
        );
        assert_eq!(mode(tmp.path()), 0o777, "left as it was");
        assert!(check(tmp.path(), TEST, Link::Refuse).is_err());
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(create(tmp.path(), TEST, Link::Follow).unwrap_err().contains("0770"));
    }

    #[test]
    fn a_symlink_is_refused_where_links_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(create(&link, TEST, Link::Refuse).unwrap_err().contains("symbolic link"));
        assert!(check(&link, TEST, Link::Refuse).is_err());
        assert_eq!(create(&link, TEST, Link::Follow), Ok(None));
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(
            create(&file, TEST, Link::Follow)
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn another_users_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(tmp.path()).unwrap();
        // Judged as if this process were another user: owner and mode are in the message.
        match judge(tmp.path(), TEST, &meta, me() + 1) {
            Verdict::Refused(m) => assert!(
                m.contains(&format!("belongs to uid {} (mode {:04o})", me(), meta.mode() & 0o7777)),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // And for real where this test may chown (root).
        if nix::unistd::chown(tmp.path(), Some(nix::unistd::Uid::from_raw(65534)), None).is_ok() {
            assert!(
                create(tmp.path(), TEST, Link::Follow)
                    .unwrap_err()
                    .contains("uid 65534")
            );
        }
    }
}
