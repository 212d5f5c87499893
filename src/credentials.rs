//! `--credentials-file`: an access key and secret for system units, where no `~/.aws` of
//! the user applies. Two formats: s3fs's `ACCESS_KEY:SECRET` line, or AWS-style
//! `aws_access_key_id = ...` / `aws_secret_access_key = ...` (/ `aws_session_token`) lines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
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
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (mut access, mut secret, mut token) = (None, None, None);
    for line in lines {
        if line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => access = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let c = parse("user_abc:rps_xyz\n").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("user_abc", "rps_xyz"));
        let c = parse("[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        assert!(parse("# nothing\n").is_none());
        assert!(parse("aws_access_key_id = AK\n").is_none());
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
}
