//! Conditional request headers (If-Match, If-None-Match, If-Modified-Since,
//! If-Unmodified-Since), evaluated in the order RFC 9110 §13.2.2 prescribes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{S3Result, s3_error};

use super::backend::StoredObject;

#[derive(Debug, Default)]
pub(crate) struct Preconditions<'a> {
    pub(crate) if_match: Option<&'a ETagCondition>,
    pub(crate) if_none_match: Option<&'a ETagCondition>,
    pub(crate) if_modified_since: Option<&'a Timestamp>,
    pub(crate) if_unmodified_since: Option<&'a Timestamp>,
}

/// What a failed If-None-Match / If-Modified-Since means.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnUnchanged {
    /// GET and HEAD: 304 Not Modified.
    NotModified,
    /// Copy sources: 412 like every other failed condition.
    PreconditionFailed,
}

impl Preconditions<'_> {
    pub(crate) fn check(&self, object: &StoredObject, on_unchanged: OnUnchanged) -> S3Result<()> {
        let modified_at = whole_seconds(object.last_modified);
        let fails = match self.if_match {
            Some(condition) => !matches(condition, &object.etag),
            None => self.if_unmodified_since.is_some_and(|since| modified_at > *since),
        };
        if fails {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        let unchanged = match self.if_none_match {
            Some(condition) => matches(condition, &object.etag),
            None => self.if_modified_since.is_some_and(|since| modified_at <= *since),
        };
        match (unchanged, on_unchanged) {
            (false, _) => Ok(()),
            (true, OnUnchanged::NotModified) => Err(s3_error!(NotModified)),
            (true, OnUnchanged::PreconditionFailed) => Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )),
        }
    }
}

/// Conditional writes: `If-None-Match: *` refuses to overwrite, `If-Match` requires the
/// current ETag (and an existing object: 404 otherwise, as on AWS).
pub(crate) fn check_write(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    existing: Option<&StoredObject>,
) -> S3Result<()> {
    if let Some(condition) = if_match {
        let existing = existing.ok_or_else(|| s3_error!(NoSuchKey))?;
        if !matches(condition, &existing.etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "the object's ETag does not match If-Match"
            ));
        }
    }
    if let (Some(condition), Some(existing)) = (if_none_match, existing)
        && matches(condition, &existing.etag)
    {
        return Err(s3_error!(
            PreconditionFailed,
            "the object already exists (If-None-Match)"
        ));
    }
    Ok(())
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(wanted) => wanted.value() == etag,
    }
}

/// HTTP dates have whole seconds, so comparisons with them must ignore sub-seconds.
fn whole_seconds(time: SystemTime) -> Timestamp {
    let seconds = time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Timestamp::from(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use s3s::S3ErrorCode;
    use s3s::dto::ETag;

    use super::*;

    fn object() -> StoredObject {
        StoredObject::new(bytes::Bytes::from_static(b"x").into(), None, BTreeMap::new())
    }

    fn etag(value: &str) -> ETagCondition {
        ETagCondition::ETag(ETag::Strong(value.to_owned()))
    }

    fn code(result: S3Result<()>) -> Option<S3ErrorCode> {
        result.err().map(|error| error.code().clone())
    }

    #[test]
    fn reads_honour_etag_conditions() {
        let object = object();
        let current = etag(&object.etag);
        let other = etag("0123");
        let check = |pre: Preconditions<'_>| code(pre.check(&object, OnUnchanged::NotModified));
        assert_eq!(
            check(Preconditions {
                if_match: Some(&current),
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            check(Preconditions {
                if_match: Some(&other),
                ..Default::default()
            }),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(
            check(Preconditions {
                if_none_match: Some(&current),
                ..Default::default()
            }),
            Some(S3ErrorCode::NotModified)
        );
        assert_eq!(
            check(Preconditions {
                if_none_match: Some(&other),
                ..Default::default()
            }),
            None
        );
    }

    #[test]
    fn writes_honour_if_none_match_star_and_if_match() {
        let object = object();
        let any = ETagCondition::Any;
        let current = etag(&object.etag);
        assert_eq!(code(check_write(None, Some(&any), None)), None);
        assert_eq!(
            code(check_write(None, Some(&any), Some(&object))),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(code(check_write(Some(&current), None, Some(&object))), None);
        assert_eq!(
            code(check_write(Some(&etag("0123")), None, Some(&object))),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(
            code(check_write(Some(&current), None, None)),
            Some(S3ErrorCode::NoSuchKey)
        );
    }
}
