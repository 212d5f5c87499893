//! Provider profiles: everything that differs between object stores, as data in one table.
//!
//! The rest of the code asks the resolved [`Profile`] what the provider can do; it never
//! checks which provider it is talking to.

use crate::source::Source;

pub const RUNPOD_DATACENTERS: &[&str] = &[
    "EU-CZ-1", "EU-RO-1", "EUR-IS-1", "EUR-NO-1", "US-CA-2", "US-GA-2", "US-IL-1", "US-KS-2", "US-MD-1", "US-MO-1",
    "US-MO-2", "US-NC-1", "US-NC-2", "US-NE-1", "US-WA-1",
];

const KB: u64 = 1000;
const MB: u64 = 1000 * KB;
const GB: u64 = 1000 * MB;
pub const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Aws,
    Runpod,
    HuggingFace,
    CoreWeave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

/// When request checksums are computed (HF's gateway rejects aws-chunked trailing checksums).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    WhenSupported,
    WhenRequired,
}

/// How the provider treats `dir/` marker objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markers {
    /// Markers are ordinary objects: mkdir creates one so empty directories persist.
    Supported,
    /// The store lists empty directories by itself (Runpod: keys are file paths).
    Native,
    /// Keys ending in `/` are rejected: empty directories live in the mount only.
    Forbidden,
}

/// How the endpoint URL is derived when `--endpoint-url` is not given.
#[derive(Debug, Clone, Copy)]
pub enum EndpointRule {
    /// The SDK's default (AWS, or `AWS_ENDPOINT_URL`).
    SdkDefault,
    /// A fixed URL.
    Fixed(&'static str),
    /// `{scope}` is replaced by the source's scope (Runpod datacenter in lower case,
    /// HF namespace).
    Template(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub enum RegionRule {
    SdkDefault,
    Fixed(&'static str),
    /// The region is the source's scope (the Runpod datacenter id).
    Scope,
}

/// Key names a provider refuses (HF): checked before a request is made, so the user gets
/// EINVAL and one log line instead of an opaque 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRules {
    Any,
    /// No leading or trailing `/`, no `//`, `../`, leading `./`, trailing `..`, `\` or NUL.
    HuggingFace,
}

/// One provider's row of the table: every behaviour that differs between providers.
#[derive(Debug, Clone)]
pub struct Profile {
    pub provider: Provider,
    pub endpoint: EndpointRule,
    pub region: RegionRule,
    pub addressing: Addressing,
    pub checksums: ChecksumPolicy,
    pub max_put_size: u64,
    pub min_part_size: u64,
    pub max_part_size: u64,
    /// Part size used for multipart uploads unless the file is too large for it.
    pub preferred_part_size: u64,
    pub max_parts: u32,
    pub max_object_size: u64,
    pub delete_objects: bool,
    pub upload_part_copy: bool,
    pub rename_object: bool,
    pub user_metadata: bool,
    pub markers: Markers,
    pub get_redirects: bool,
    pub list_v1: bool,
    /// The provider honours If-Match on GetObject; otherwise the response ETag is compared.
    pub get_if_match: bool,
    /// The provider honours If-Match on PutObject: an upload of a changed file names the
    /// version it was based on. Otherwise a HEAD just before the upload compares.
    pub put_if_match: bool,
    /// The same on CompleteMultipartUpload.
    pub complete_if_match: bool,
    /// Key prefixes (relative to the bucket) the provider uses for itself; never shown.
    pub hidden_prefixes: &'static [&'static str],
    pub name_rules: NameRules,
    /// Environment variables some of this provider's tools use for credentials.
    pub credential_env: Option<(&'static str, &'static str)>,
}

const AWS: Profile = Profile {
    provider: Provider::Aws,
    endpoint: EndpointRule::SdkDefault,
    region: RegionRule::SdkDefault,
    addressing: Addressing::Virtual,
    checksums: ChecksumPolicy::WhenSupported,
    max_put_size: 5 * GIB,
    min_part_size: 5 * MIB,
    max_part_size: 5 * GIB,
    preferred_part_size: 16 * MIB,
    max_parts: 10_000,
    max_object_size: 5 * TIB,
    delete_objects: true,
    upload_part_copy: true,
    rename_object: false,
    user_metadata: true,
    markers: Markers::Supported,
    get_redirects: false,
    list_v1: true,
    get_if_match: true,
    // If-Match on PutObject: AWS (since 2024), CoreWeave ("Conditional writes"), MinIO,
    // moto. On CompleteMultipartUpload S3-compatible servers differ (moto ignores it): the
    // generic row checks with a HEAD, one request per multipart upload.
    put_if_match: true,
    complete_if_match: false,
    hidden_prefixes: &[],
    name_rules: NameRules::Any,
    credential_env: None,
};

/// The table. PROVIDERS.md is the source of every value here.
pub const PROFILES: &[Profile] = &[
    AWS,
    Profile {
        provider: Provider::Runpod,
        endpoint: EndpointRule::Template("https://s3api-{scope}.runpod.io/"),
        region: RegionRule::Scope,
        addressing: Addressing::Path,
        checksums: ChecksumPolicy::WhenRequired,
        max_put_size: 500 * MB,
        // Runpod does not enforce a minimum; small parts still cost a request each.
        min_part_size: 0,
        max_part_size: 500 * MB,
        preferred_part_size: 64 * MIB,
        max_parts: 10_000,
        max_object_size: 4 * TIB,
        delete_objects: false,
        upload_part_copy: false,
        rename_object: false,
        user_metadata: true,
        markers: Markers::Native,
        get_redirects: false,
        list_v1: true,
        get_if_match: true,
        // The Runpod S3 API documents no conditional writes.
        put_if_match: false,
        complete_if_match: false,
        hidden_prefixes: &[".s3compat_uploads/"],
        name_rules: NameRules::Any,
        credential_env: Some(("RUNPOD_S3_ACCESS_KEY", "RUNPOD_S3_SECRET_KEY")),
    },
    Profile {
        provider: Provider::HuggingFace,
        endpoint: EndpointRule::Template("https://s3.hf.co/{scope}/"),
        region: RegionRule::Fixed("us-east-1"),
        addressing: Addressing::Path,
        checksums: ChecksumPolicy::WhenRequired,
        max_put_size: 5 * GIB,
        min_part_size: 5 * MIB,
        max_part_size: 2 * GB,
        // The gateway recommends large parts: fewer parts, fewer round trips.
        preferred_part_size: 256 * MIB,
        max_parts: 10_000,
        max_object_size: 5 * TIB,
        delete_objects: true,
        upload_part_copy: false,
        rename_object: false,
        user_metadata: false,
        markers: Markers::Forbidden,
        get_redirects: true,
        list_v1: false,
        get_if_match: false,
        // "If-Match / If-None-Match preconditions are honored on PutObject"; nothing is
        // said of CompleteMultipartUpload.
        put_if_match: true,
        complete_if_match: false,
        hidden_prefixes: &[],
        name_rules: NameRules::HuggingFace,
        credential_env: None,
    },
    Profile {
        provider: Provider::CoreWeave,
        endpoint: EndpointRule::Fixed("https://cwobject.com"),
        region: RegionRule::Fixed("us-east-1"),
        rename_object: true,
        // "supports conditional writes for s3:PutObject, s3:CompleteMultiPartUpLoad".
        complete_if_match: true,
        ..AWS
    },
];

impl Provider {
    pub fn profile(self) -> &'static Profile {
        PROFILES
            .iter()
            .find(|p| p.provider == self)
            .expect("every provider has a row in PROFILES")
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "s3",
            Provider::Runpod => "runpod",
            Provider::HuggingFace => "hf",
            Provider::CoreWeave => "cw",
        }
    }
}

/// Command-line overrides of profile fields; `None` keeps the table's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub checksums: Option<ChecksumPolicy>,
    pub max_put_size: Option<u64>,
    pub part_size: Option<u64>,
    pub min_part_size: Option<u64>,
    pub max_part_size: Option<u64>,
    pub max_parts: Option<u32>,
    pub delete_objects: Option<bool>,
    pub upload_part_copy: Option<bool>,
    pub rename_object: Option<bool>,
    pub user_metadata: Option<bool>,
    pub markers: Option<Markers>,
    pub get_redirects: Option<bool>,
    pub list_v1: Option<bool>,
    /// Both `put_if_match` and `complete_if_match`.
    pub conditional_writes: Option<bool>,
    /// `Resolved::unsigned_uploads`; `None`: over HTTPS where a checksum goes along.
    pub unsigned_payload: Option<bool>,
}

/// A profile applied to one source, with the command line's overrides: what the store and
/// the filesystem actually use.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub profile: Profile,
    pub bucket: String,
    pub prefix: String,
    /// `None`: the SDK's default endpoint resolution (AWS).
    pub endpoint: Option<String>,
    /// `None`: the SDK's default region chain.
    pub region: Option<String>,
    /// `--unsigned-payload`: see `unsigned_uploads`.
    pub unsigned_payload: Option<bool>,
}

impl Resolved {
    pub fn new(source: &Source, o: &Overrides) -> Resolved {
        let mut p = source.provider.profile().clone();
        if o.force_path_style {
            p.addressing = Addressing::Path;
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = o.$field { p.$field = v; } )* };
        }
        set!(checksums, max_put_size, min_part_size, max_part_size, max_parts);
        set!(delete_objects, upload_part_copy, rename_object, user_metadata, markers);
        set!(get_redirects, list_v1);
        if let Some(v) = o.conditional_writes {
            p.put_if_match = v;
            p.complete_if_match = v;
        }
        if let Some(size) = o.part_size {
            p.preferred_part_size = size;
        }
        let scope = source.scope.clone().unwrap_or_default();
        let endpoint = o.endpoint_url.clone().or_else(|| match p.endpoint {
            EndpointRule::SdkDefault => None,
            EndpointRule::Fixed(url) => Some(url.to_string()),
            EndpointRule::Template(t) => Some(t.replace("{scope}", &scope.to_ascii_lowercase())),
        });
        let region = o.region.clone().or_else(|| match p.region {
            RegionRule::SdkDefault => None,
            RegionRule::Fixed(r) => Some(r.to_string()),
            RegionRule::Scope => Some(scope.clone()),
        });
        Resolved {
            profile: p,
            bucket: source.bucket.clone(),
            prefix: source.prefix.clone(),
            endpoint: endpoint.map(|e| endpoint_with_path_slash(&e)),
            region,
            unsigned_payload: o.unsigned_payload,
        }
    }

    /// Whether upload bodies go with `UNSIGNED-PAYLOAD` instead of their SHA-256 in the
    /// signature (a third of the daemon's CPU while it uploads), `endpoint` being the one
    /// requests go to (`None`: AWS's own, HTTPS). By default over HTTPS where a CRC32
    /// header (signed) goes with each body, as aws-cli, boto3 and rclone do: TLS keeps the
    /// body from being changed on the way and the provider checks the CRC. Over plain HTTP
    /// the signature is a body's only protection, so only on request there.
    pub fn unsigned_uploads(&self, endpoint: Option<&str>) -> bool {
        let https = endpoint.is_none_or(|e| e.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")));
        self.unsigned_payload
            .unwrap_or(https && self.profile.checksums == ChecksumPolicy::WhenSupported)
    }

    /// The part size for an object of (at most) `size` bytes: the preferred size, grown so
    /// the object fits in `max_parts`, kept within the provider's bounds.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let p = &self.profile;
        let needed = size.div_ceil(u64::from(p.max_parts.max(1)));
        p.preferred_part_size
            .max(needed)
            .max(p.min_part_size)
            .min(p.max_part_size)
    }

    /// Why `key` cannot be stored on this provider, if it cannot.
    pub fn forbidden_key(&self, key: &str) -> Option<&'static str> {
        if key.contains('\0') {
            return Some("contains NUL");
        }
        match self.profile.name_rules {
            NameRules::Any => None,
            NameRules::HuggingFace => hf_forbidden(key),
        }
    }
}

fn hf_forbidden(key: &str) -> Option<&'static str> {
    if key.starts_with('/') || key.ends_with('/') {
        Some("starts or ends with '/'")
    } else if key.contains("//") {
        Some("contains '//'")
    } else if key.contains("../") || key.ends_with("..") {
        Some("contains '../' or ends with '..'")
    } else if key.starts_with("./") {
        Some("starts with './'")
    } else if key.contains('\\') {
        Some("contains '\\'")
    } else {
        None
    }
}

/// An endpoint with a path (`https://s3.hf.co/ns`) needs a trailing slash, or the SDK's
/// path-style URL glues the bucket onto the last segment (`/nsbucket`).
fn endpoint_with_path_slash(endpoint: &str) -> String {
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let has_path = after_scheme.trim_end_matches('/').contains('/');
    if has_path && !endpoint.ends_with('/') {
        format!("{endpoint}/")
    } else {
        endpoint.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(src: &str, o: Overrides) -> Resolved {
        Resolved::new(&Source::parse(src).unwrap(), &o)
    }

    #[test]
    fn runpod_endpoint_region_and_limits() {
        let r = resolve("runpod://EU-RO-1/vol", Overrides::default());
        assert_eq!(r.endpoint.as_deref(), Some("https://s3api-eu-ro-1.runpod.io/"));
        assert_eq!(r.region.as_deref(), Some("EU-RO-1"));
        assert_eq!(r.profile.addressing, Addressing::Path);
        assert_eq!(r.profile.max_put_size, 500_000_000);
        assert!(!r.profile.delete_objects && !r.profile.upload_part_copy);
        assert_eq!(r.profile.hidden_prefixes, &[".s3compat_uploads/"]);
    }

    #[test]
    fn upload_bodies_go_unsigned_over_https_with_a_checksum_or_when_asked() {
        let unsigned = |src: &str, o: Overrides| {
            let r = resolve(src, o);
            r.unsigned_uploads(r.endpoint.as_deref())
        };
        assert!(unsigned("cw://b", Overrides::default()), "CoreWeave over HTTPS");
        assert!(unsigned("s3://b", Overrides::default()), "AWS's own endpoints");
        let endpoint = |url: &str| Overrides {
            endpoint_url: Some(url.into()),
            ..Overrides::default()
        };
        assert!(unsigned("s3://b", endpoint("HTTPS://minio.example:9000")));
        assert!(!unsigned("s3://b", endpoint("http://cwlota.com")), "plain HTTP");
        assert!(
            !unsigned("runpod://EU-RO-1/vol", Overrides::default()),
            "no checksum sent"
        );
        assert!(!unsigned("hf://ns/b", Overrides::default()), "no checksum sent");
        let asked = |on: bool| Overrides {
            unsigned_payload: Some(on),
            ..endpoint("http://127.0.0.1:9000")
        };
        assert!(unsigned("s3://b", asked(true)));
        assert!(!unsigned(
            "cw://b",
            Overrides {
                unsigned_payload: Some(false),
                ..Overrides::default()
            }
        ));
        let aws = resolve("s3://b", Overrides::default());
        assert!(
            !aws.unsigned_uploads(Some("http://10.0.0.5:9000")),
            "an endpoint from the environment or the AWS profile counts too"
        );
    }

    #[test]
    fn hf_endpoint_keeps_its_trailing_slash() {
        let r = resolve("hf://ns/b", Overrides::default());
        assert_eq!(r.endpoint.as_deref(), Some("https://s3.hf.co/ns/"));
        let o = Overrides {
            endpoint_url: Some("http://127.0.0.1:9/ns".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve("hf://ns/b", o).endpoint.as_deref(),
            Some("http://127.0.0.1:9/ns/")
        );
        let o = Overrides {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        assert_eq!(resolve("s3://b", o).endpoint.as_deref(), Some("http://127.0.0.1:9"));
    }

    #[test]
    fn overrides_describe_an_unknown_provider() {
        let o = Overrides {
            force_path_style: true,
            user_metadata: Some(false),
            max_put_size: Some(100),
            part_size: Some(8 << 20),
            markers: Some(Markers::Forbidden),
            ..Default::default()
        };
        let r = resolve("s3://b", o);
        assert_eq!(r.profile.addressing, Addressing::Path);
        assert!(!r.profile.user_metadata);
        assert_eq!(r.profile.max_put_size, 100);
        assert_eq!(r.profile.preferred_part_size, 8 << 20);
        assert_eq!(r.profile.markers, Markers::Forbidden);
    }

    #[test]
    fn part_size_grows_for_huge_objects() {
        let r = resolve("s3://b", Overrides::default());
        assert_eq!(r.part_size_for(1 << 30), 16 * MIB);
        let size = 4 * TIB;
        let part = r.part_size_for(size);
        assert!(size.div_ceil(part) <= 10_000 && part <= 5 * GIB);
        let runpod = resolve("runpod://US-WA-1/v", Overrides::default());
        assert!(runpod.part_size_for(4 * TIB) <= 500 * MB);
    }

    #[test]
    fn hf_name_rules() {
        let r = resolve("hf://ns/b", Overrides::default());
        for bad in ["/a", "a/", "a//b", "a/../b", "./a", "a..", "a\\b", "a\0b"] {
            assert!(r.forbidden_key(bad).is_some(), "{bad:?}");
        }
        assert!(r.forbidden_key("a/b c#%+é.txt").is_none());
        assert!(resolve("s3://b", Overrides::default()).forbidden_key("a/").is_none());
    }
}
