//! SOURCE URIs: `s3://BUCKET[/PREFIX]`, `runpod://DATACENTER/VOLUME_ID[/PREFIX]`,
//! `hf://NAMESPACE/BUCKET[/PREFIX]`, `cw://BUCKET[/PREFIX]`.
//!
//! Parsing is pure: a malformed source is rejected before any network call.

use crate::provider::{Provider, RUNPOD_DATACENTERS};
use std::fmt;

/// Where a mount's objects live: provider, bucket and the key prefix that is the mount root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub provider: Provider,
    pub bucket: String,
    /// Empty, or ends with `/`: the key prefix shown as the mount root.
    pub prefix: String,
    /// Runpod datacenter id (upper case) or Hugging Face namespace; fills the endpoint template.
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

const FORMS: &str = "expected s3://BUCKET[/PREFIX], runpod://DATACENTER/VOLUME_ID[/PREFIX], \
                     hf://NAMESPACE/BUCKET[/PREFIX] or cw://BUCKET[/PREFIX]";

impl Source {
    pub fn parse(text: &str) -> Result<Source, SourceError> {
        let err = |why: &str| SourceError(format!("invalid source '{text}': {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| err(&format!("no scheme; {FORMS}")))?;
        let provider = match scheme {
            "s3" => Provider::Aws,
            "runpod" => Provider::Runpod,
            "hf" => Provider::HuggingFace,
            "cw" => Provider::CoreWeave,
            other => return Err(err(&format!("unknown scheme '{other}://'; {FORMS}"))),
        };
        if rest.contains('\0') {
            return Err(err("contains a NUL byte"));
        }
        let mut parts = rest.splitn(2, '/');
        let first = parts.next().unwrap_or_default();
        let after_first = parts.next().unwrap_or_default();
        let (scope, bucket, prefix) = match provider {
            Provider::Aws | Provider::CoreWeave => (None, first, after_first),
            Provider::Runpod | Provider::HuggingFace => {
                let mut inner = after_first.splitn(2, '/');
                let bucket = inner.next().unwrap_or_default();
                (Some(first), bucket, inner.next().unwrap_or_default())
            }
        };
        let scope = match (provider, scope) {
            (Provider::Runpod, Some(dc)) => Some(runpod_datacenter(dc).map_err(|e| err(&e))?),
            (Provider::HuggingFace, Some("")) => return Err(err("empty namespace")),
            (_, scope) => scope.map(str::to_string),
        };
        if bucket.is_empty() {
            let what = match provider {
                Provider::Runpod => "empty volume id",
                _ => "empty bucket name",
            };
            return Err(err(what));
        }
        if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("bucket name contains whitespace or control characters"));
        }
        Ok(Source {
            provider,
            bucket: bucket.to_string(),
            prefix: normalize_prefix(prefix).map_err(|e| err(&e))?,
            scope,
        })
    }
}

fn runpod_datacenter(dc: &str) -> Result<String, String> {
    if dc.is_empty() {
        return Err("empty datacenter".into());
    }
    let upper = dc.to_ascii_uppercase();
    if RUNPOD_DATACENTERS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "unknown Runpod datacenter '{dc}' (datacenters with the S3 API: {}; use --endpoint-url for another)",
            RUNPOD_DATACENTERS.join(", ")
        ))
    }
}

/// `a/b` and `a/b/` both mean the prefix `a/b/`; empty segments (`a//b`) cannot be a directory.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("prefix '{prefix}' has an empty, '.' or '..' segment"));
    }
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Source {
        Source::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_every_form() {
        let s = ok("s3://bucket");
        assert_eq!(
            (s.provider, s.bucket.as_str(), s.prefix.as_str()),
            (Provider::Aws, "bucket", "")
        );
        let s = ok("s3://bucket/a/b");
        assert_eq!(s.prefix, "a/b/");
        let s = ok("runpod://eu-ro-1/vol123/models/");
        assert_eq!(s.provider, Provider::Runpod);
        assert_eq!(s.scope.as_deref(), Some("EU-RO-1"));
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("vol123", "models/"));
        let s = ok("hf://my-org/weights");
        assert_eq!(s.provider, Provider::HuggingFace);
        assert_eq!(s.scope.as_deref(), Some("my-org"));
        assert_eq!(s.bucket, "weights");
        let s = ok("cw://data/x");
        assert_eq!(
            (s.provider, s.bucket.as_str(), s.prefix.as_str()),
            (Provider::CoreWeave, "data", "x/")
        );
    }

    #[test]
    fn rejects_malformed_sources() {
        for bad in [
            "bucket",
            "ftp://bucket",
            "s3://",
            "s3:///prefix",
            "cw://",
            "hf://ns",
            "hf://ns/",
            "hf:///bucket",
            "runpod://EU-RO-1",
            "runpod://EU-RO-1/",
            "s3://b/a//c",
            "s3://b/../c",
            "s3://b c",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn unknown_datacenter_lists_the_valid_ones() {
        let e = Source::parse("runpod://XX-1/vol").unwrap_err().to_string();
        assert!(e.contains("unknown Runpod datacenter 'XX-1'"), "{e}");
        assert!(e.contains("EU-RO-1") && e.contains("US-WA-1"), "{e}");
    }
}
