//! `--credentials-file`: an access key and secret (and a session token) for system units,
//! where no `~/.aws` of the user applies. Two formats: s3fs's `ACCESS_KEY:SECRET` line, or
//! `aws_access_key_id = ...` / `aws_secret_access_key = ...` / `aws_session_token = ...`
//! lines (`~/.aws/credentials` style; `AWS_ACCESS_KEY_ID=...` and `export ...` lines, as
//! `aws configure export-credentials` prints them, read the same).
//!
//! Keys get rotated and session tokens expire while a mount lives on: [`CredentialsFile`]
//! is an SDK credentials provider that re-reads the file when it changes, so whoever
//! rotates the key only has to rewrite the file.

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, future};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl StaticCredentials {
    pub fn to_sdk(&self, source: &'static str) -> Credentials {
        Credentials::new(
            &self.access_key,
            &self.secret_key,
            self.session_token.clone(),
            None,
            source,
        )
    }
}

pub fn read_credentials_file(path: &Path) -> Result<StaticCredentials, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "credentials file {shown} is readable by every user; run: chmod 600 {shown}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    parse(&text).ok_or_else(|| {
        format!(
            "credentials file {shown}: expected 'ACCESS_KEY:SECRET' or \
             'aws_access_key_id = ...' and 'aws_secret_access_key = ...' lines"
        )
    })
}

fn parse(text: &str) -> Option<StaticCredentials> {
    let lines = text
        .lines()
        .map(str::trim)
        .map(|l| l.strip_prefix("export ").unwrap_or(l).trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (mut access, mut secret, mut token) = (None, None, None);
    for line in lines {
        if line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(unquote(v.trim()).to_string());
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => access = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v.filter(|t| !t.is_empty()),
                _ => {}
            }
        } else if let Some((a, s)) = line.split_once(':') {
            access = Some(a.trim().to_string());
            secret = Some(s.trim().to_string());
        }
    }
    match (access, secret) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Some(StaticCredentials {
            access_key: a,
            secret_key: s,
            session_token: token,
        }),
        _ => None,
    }
}

/// Shell quoting, as `export AWS_SESSION_TOKEN="..."` lines have it.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// How often at most the file's metadata is looked at when credentials are asked for
/// (every request asks).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The credentials of a `--credentials-file`, re-read when the file changes (checked at
/// most once a second, by its metadata) and when the server refuses them
/// ([`refresh`](Self::refresh)). A handle: clones share one state.
#[derive(Debug, Clone)]
pub struct CredentialsFile {
    inner: Arc<Watched>,
}

#[derive(Debug)]
struct Watched {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    credentials: StaticCredentials,
    stamp: Option<Stamp>,
    checked: Instant,
    /// Counts changes of the credentials, so a caller can tell whether a refused request
    /// was signed with the ones now in use.
    generation: u64,
}

/// What changes when a file is rewritten in place or replaced by a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

impl CredentialsFile {
    /// Reads the file; an unusable file is an error here, at mount time.
    pub fn open(path: &Path) -> Result<CredentialsFile, String> {
        let stamp = stamp(path);
        let credentials = read_credentials_file(path)?;
        Ok(CredentialsFile {
            inner: Arc::new(Watched {
                path: path.to_path_buf(),
                state: Mutex::new(State {
                    credentials,
                    stamp,
                    checked: Instant::now(),
                    generation: 0,
                }),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// The credentials to sign with; re-reads the file if its metadata changed since the
    /// last look (which is at most a second old).
    pub fn current(&self) -> StaticCredentials {
        let mut state = self.state();
        if state.checked.elapsed() >= CHECK_INTERVAL {
            state.checked = Instant::now();
            let now = stamp(&self.inner.path);
            if now != state.stamp {
                state.stamp = now;
                self.reload(&mut state);
            }
        }
        state.credentials.clone()
    }

    /// Re-reads the file now, whatever its metadata says (the server refused the
    /// credentials); returns the generation then in use.
    pub fn refresh(&self) -> u64 {
        let mut state = self.state();
        state.checked = Instant::now();
        state.stamp = stamp(&self.inner.path);
        self.reload(&mut state);
        state.generation
    }

    /// A file that cannot be used (being rewritten, broken, made world-readable) keeps the
    /// credentials read before: they may still work, and the next change is read again.
    fn reload(&self, state: &mut State) {
        match read_credentials_file(&self.inner.path) {
            Ok(c) if c == state.credentials => {}
            Ok(c) => {
                state.credentials = c;
                state.generation += 1;
                tracing::info!("{}: read new credentials", self.inner.path.display());
            }
            Err(e) => tracing::warn!("{e}; still using the credentials read before"),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state whole.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ProvideCredentials for CredentialsFile {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Ok(self.current().to_sdk("s3vol-credentials-file")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let c = parse("user_abc:rps_xyz\n").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("user_abc", "rps_xyz"));
        let c = parse("[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        assert_eq!(c.session_token, None);
        assert!(parse("# nothing\n").is_none());
        assert!(parse("aws_access_key_id = AK\n").is_none());
    }

    #[test]
    fn session_tokens_in_either_spelling() {
        let c = parse("aws_access_key_id = AK\naws_secret_access_key = SK\naws_session_token = T/o+k=\n").unwrap();
        assert_eq!(c.session_token.as_deref(), Some("T/o+k="));
        let exported = "export AWS_ACCESS_KEY_ID=AK\nexport AWS_SECRET_ACCESS_KEY='SK'\n\
                        export AWS_SESSION_TOKEN=\"TOK\"\nexport AWS_CREDENTIAL_EXPIRATION=2030-01-01T00:00:00Z\n";
        let c = parse(exported).unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.secret_key.as_str(), c.session_token.as_deref()),
            ("AK", "SK", Some("TOK"))
        );
    }

    #[test]
    fn refuses_a_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred");
        std::fs::write(&path, "a:b").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_credentials_file(&path).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credentials_file(&path).unwrap().access_key, "a");
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_rewritten_file_is_read_again_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred");
        write_private(&path, "old:secret");
        let file = CredentialsFile::open(&path).unwrap();
        assert_eq!(file.current().access_key, "old");

        // Replaced by a rename, as rotation tools do.
        let next = dir.path().join("cred.new");
        write_private(&next, "new:secret");
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.refresh(), 1);
        assert_eq!(file.current().access_key, "new");
        assert_eq!(file.refresh(), 1, "an unchanged file is no new generation");

        write_private(&path, "garbage");
        assert_eq!(file.refresh(), 1);
        assert_eq!(file.current().access_key, "new", "a broken file keeps the keys in use");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.refresh(), 1);
        assert_eq!(file.current().access_key, "new");
    }

    #[test]
    fn a_change_is_seen_without_a_refresh_once_the_check_interval_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred");
        write_private(
            &path,
            "aws_access_key_id=A1\naws_secret_access_key=S\naws_session_token=T1\n",
        );
        let file = CredentialsFile::open(&path).unwrap();
        assert_eq!(file.current().session_token.as_deref(), Some("T1"));
        write_private(
            &path,
            "aws_access_key_id=A1\naws_secret_access_key=S\naws_session_token=T2\n",
        );
        // Not a timed assertion: waits until the interval has surely passed.
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(file.current().session_token.as_deref(), Some("T2"));
        assert_eq!(file.generation(), 1);
    }
}
