//! The shared cache tier's setup (`--shared-cache`) and its administration (`s3vol
//! shared-cache prune`). What the tier does on the read path is `fs/shared_tier.rs`.
//!
//! Trust model: a tier is shared by the mounts of one source. Each source's blocks live
//! under their own prefix (`PREFIX/s3vol-ID/`, ID a hash of the origin's endpoint, bucket
//! and prefix), so mounts of another source never meet them; whoever can read the tier
//! can read those blocks, so a tier is given only to machines trusted with the source.
//! `--shared-cache-confirm-origin` makes a mount check with the origin (one HEAD per
//! object version) that it may read an object before it serves shared blocks of it.

use crate::cli::{PruneArgs, SharedCacheArgs};
use crate::credentials::CredentialsFile;
use crate::fs::shared_tier::{SharedTier, TierConfig};
use crate::metrics::Metrics;
use crate::provider::{Overrides, Provider, Resolved};
use crate::source::Source;
use crate::store::pagination::Pagination;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{CaBundle, ListRequest, ObjectMeta, ObjectStore, RetryPolicy, StoreError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest wait for one block from the tier: far below the origin's timeouts, so that a
/// tier that stalls costs a reader little before it goes to the origin.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the mount-time check that the tier answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects the tier `args` names for a mount of `origin`; `None` without
/// `--shared-cache`. Fails only on a malformed option: a tier that is down or refuses us is
/// a warning, and the mount reads from the origin until it answers.
pub async fn connect(
    args: &SharedCacheArgs,
    origin: &Resolved,
    origin_store: &Arc<dyn ObjectStore>,
    memory_limit: u64,
    ca_bundle: Option<CaBundle>,
) -> Result<Option<Arc<SharedTier>>, String> {
    let Some(uri) = &args.shared_cache else {
        return Ok(None);
    };
    let tier = resolve(
        uri,
        args.shared_cache_endpoint_url.clone(),
        args.shared_cache_region.clone(),
    )?;
    let credentials_file = match &args.shared_cache_credentials_file {
        Some(path) => Some(CredentialsFile::open(path)?),
        None => None,
    };
    let store = S3Store::connect(&tier, tier_settings(credentials_file, ca_bundle)).await?;
    let prefix = format!("{}s3vol-{}/", tier.prefix, source_id(origin));
    probe(&store, &tier.bucket, &prefix).await;
    Ok(Some(SharedTier::new(TierConfig {
        store: Arc::new(store),
        prefix,
        origin: format!("{}/{}", origin_endpoint(origin), origin.bucket),
        timeout: BLOCK_TIMEOUT,
        read_only: args.shared_cache_read_only,
        // A sixteenth of the memory limit: 64 MiB by default.
        queue_bytes: memory_limit / 16,
        confirm_origin: args.shared_cache_confirm_origin.then(|| origin_store.clone()),
    })))
}

/// The tier's bucket and prefix from its URI; path-style addressing where an endpoint is
/// given (MinIO, Ceph and Garage serve it; virtual hosts need DNS set up for them).
fn resolve(uri: &str, endpoint_url: Option<String>, region: Option<String>) -> Result<Resolved, String> {
    let expected = "expected s3://BUCKET[/PREFIX] (with --shared-cache-endpoint-url for a store other than AWS)";
    if !uri.starts_with("s3://") {
        return Err(format!("--shared-cache: {expected}, got '{uri}'"));
    }
    let source = Source::parse(uri).map_err(|e| format!("--shared-cache: {e}"))?;
    if source.provider != Provider::Aws {
        return Err(format!("--shared-cache: {expected}, got '{uri}'"));
    }
    let overrides = Overrides {
        force_path_style: endpoint_url.is_some(),
        endpoint_url,
        region,
        ..Overrides::default()
    };
    Ok(Resolved::new(&source, &overrides))
}

/// Short timeouts and no retries: a tier that does not answer at once is skipped.
fn tier_settings(credentials_file: Option<CredentialsFile>, ca_bundle: Option<CaBundle>) -> S3Settings {
    S3Settings {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        connect_timeout: Duration::from_secs(1),
        read_timeout: BLOCK_TIMEOUT,
        operation_timeout: Duration::from_secs(10),
        max_requests: 64,
        credentials_file,
        ca_bundle,
        // The origin's request metrics stay the origin's.
        metrics: Arc::new(Metrics::default()),
        ..S3Settings::default()
    }
}

fn origin_endpoint(origin: &Resolved) -> String {
    match (&origin.endpoint, &origin.region) {
        (Some(endpoint), _) => endpoint.trim_end_matches('/').to_string(),
        (None, Some(region)) => format!("aws:{region}"),
        (None, None) => "aws".to_string(),
    }
}

/// The source's directory in the tier: 16 hex digits of a hash of where its objects are.
fn source_id(origin: &Resolved) -> String {
    use sha2::Digest;
    let text = format!("{}\n{}\n{}", origin_endpoint(origin), origin.bucket, origin.prefix);
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One LIST of the source's prefix in the tier, to say at mount time whether it answers.
async fn probe(store: &S3Store, bucket: &str, prefix: &str) {
    let request = ListRequest {
        prefix: prefix.to_string(),
        max_keys: Some(1),
        ..ListRequest::default()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, store.list_page(&request)).await {
        Ok(Ok(_)) => tracing::info!("shared cache: s3://{bucket}/{prefix}"),
        Ok(Err(e)) => tracing::warn!("shared cache s3://{bucket}/{prefix}: {e}; reading from the origin meanwhile"),
        Err(_) => {
            tracing::warn!("shared cache s3://{bucket}/{prefix} does not answer; reading from the origin meanwhile")
        }
    }
}

/// `s3vol shared-cache prune`: keeps the most recently written blocks up to `max_size`
/// bytes and deletes the rest.
pub async fn prune(args: &PruneArgs) -> Result<String, String> {
    let tier = resolve(
        &args.connect.source,
        args.connect.endpoint_url.clone(),
        args.connect.region.clone(),
    )?;
    let mut settings = args.connect.settings()?;
    settings.metrics = Arc::new(Metrics::default());
    let store = S3Store::connect(&tier, settings).await?;
    let mut blocks = list_all(&store, &tier.prefix).await?;
    // Newest first: what is kept.
    blocks.sort_by_key(|b| std::cmp::Reverse(b.last_modified.unwrap_or(SystemTime::UNIX_EPOCH)));
    let (mut kept, mut kept_bytes) = (0u64, 0u64);
    let mut doomed = Vec::new();
    let mut doomed_bytes = 0u64;
    for block in blocks {
        if kept_bytes + block.size <= args.max_size && doomed.is_empty() {
            kept += 1;
            kept_bytes += block.size;
        } else {
            doomed_bytes += block.size;
            doomed.push(block.key);
        }
    }
    let deleted = doomed.len();
    if !args.dry_run {
        for chunk in doomed.chunks(1000) {
            store
                .delete_many(chunk)
                .await
                .map_err(|e| format!("deleting blocks under s3://{}/{}: {e}", tier.bucket, tier.prefix))?;
        }
    }
    Ok(format!(
        "{}kept {kept} blocks ({kept_bytes} bytes), {} {deleted} ({doomed_bytes} bytes)",
        if args.dry_run { "dry run: " } else { "" },
        if args.dry_run { "would delete" } else { "deleted" },
    ))
}

/// Every key under `prefix` that is an s3vol block (in any source's directory). A server
/// that never ends the listing is an error, not an endless loop (`Pagination`).
async fn list_all(store: &S3Store, prefix: &str) -> Result<Vec<ObjectMeta>, String> {
    let failed = |e: StoreError| format!("listing the tier under '{prefix}': {e}");
    let mut out = Vec::new();
    let mut pagination = Pagination::default();
    let mut request = ListRequest {
        prefix: prefix.to_string(),
        ..ListRequest::default()
    };
    loop {
        let page = store.list_page(&request).await.map_err(failed)?;
        let next = pagination.next(prefix, &page).map_err(failed)?;
        out.extend(
            page.objects
                .into_iter()
                .filter(|o| o.key.strip_prefix(prefix).is_some_and(is_block)),
        );
        match next {
            Some(token) => request.continuation = Some(token),
            None => return Ok(out),
        }
    }
}

/// `s3vol-ID/HASH`: what a mount writes; anything else under the prefix is left alone.
fn is_block(rest: &str) -> bool {
    let Some((dir, name)) = rest.split_once('/') else {
        return false;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    dir.strip_prefix("s3vol-").is_some_and(|id| hex(id, 16)) && hex(name, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s3_uris_name_a_tier_and_an_endpoint_means_path_style() {
        let r = resolve("s3://tier/team-a", Some("http://10.0.0.5:9000".into()), None).unwrap();
        assert_eq!((r.bucket.as_str(), r.prefix.as_str()), ("tier", "team-a/"));
        assert_eq!(r.endpoint.as_deref(), Some("http://10.0.0.5:9000"));
        assert!(
            resolve("hf://ns/bucket", None, None)
                .unwrap_err()
                .contains("expected s3://")
        );
        assert!(resolve("tier", None, None).is_err());
    }

    #[test]
    fn each_source_has_its_own_directory() {
        let a = resolve("s3://models/llama", Some("https://origin".into()), None).unwrap();
        let b = resolve("s3://models/mistral", Some("https://origin".into()), None).unwrap();
        let c = resolve("s3://models/llama", Some("https://other".into()), None).unwrap();
        let ids = [source_id(&a), source_id(&b), source_id(&c)];
        assert!(ids.iter().all(|id| id.len() == 16));
        assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2]);
        assert_eq!(source_id(&a), source_id(&a.clone()));
    }

    #[test]
    fn prune_touches_only_block_keys() {
        let block = format!("s3vol-{}/{}", "0123456789abcdef", "ab".repeat(32));
        assert!(is_block(&block));
        assert!(!is_block("s3vol-0123456789abcdef/notes.txt"));
        assert!(!is_block(&format!("backups/{}", "ab".repeat(32))));
        assert!(!is_block("s3vol-xyz/"));
    }
}
