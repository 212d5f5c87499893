//! How keys, metadata and checksums are put on the wire and read back.

use crate::store::Metadata;
use std::collections::HashMap;

/// A key as a URL path: every byte but the unreserved ones and `/` percent-encoded.
pub(super) fn encode_key(key: &str) -> String {
    percent_encode(key.as_bytes(), b"/")
}

/// `bytes` with every byte but the unreserved ones (RFC 3986) and those of `keep`
/// percent-encoded, in upper-case hex as SigV4 wants it.
pub(super) fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            _ if keep.contains(&b) => out.push(char::from(b)),
            _ => {
                // Pushed by hand, not `format!`: every GET's key goes through here.
                const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(DIGITS[usize::from(b >> 4)]));
                out.push(char::from(DIGITS[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// Decodes a key of an `encoding-type=url` listing: `%XX` escapes, and `+` for a space
/// (S3 encodes a literal `+` as `%2B`). A malformed escape is kept as it is.
pub(super) fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn metadata_map(m: Option<&HashMap<String, String>>) -> Metadata {
    m.map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        .unwrap_or_default()
}

pub(super) fn hash_map(m: &Metadata) -> Option<HashMap<String, String>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// DeleteObjects is the one call whose checksum S3 requires, so even "checksums only when
/// required" puts `x-amz-checksum-crc32` on it, which a gateway that refuses checksum
/// headers (Hugging Face) rejects. Content-MD5, what S3 first required there, replaces it.
/// Runs before signing, so the signature covers the final headers.
pub(super) fn content_md5_instead_of_checksums(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    use s3s::crypto::{Checksum, Md5};
    let Some(body) = req.body().bytes() else {
        return;
    };
    let md5 = aws_smithy_types::base64::encode(Md5::checksum(body));
    let headers = req.headers_mut();
    let checksums: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("x-amz-checksum-") || *name == "x-amz-sdk-checksum-algorithm")
        .map(str::to_string)
        .collect();
    for name in checksums {
        headers.remove(name);
    }
    headers.insert("content-md5", md5);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_for_copy_sources() {
        assert_eq!(encode_key("a b/#%+é"), "a%20b/%23%25%2B%C3%A9");
    }

    #[test]
    fn delete_objects_checksum_headers_become_content_md5() {
        let mut req = aws_sdk_s3::config::http::HttpRequest::new(aws_smithy_types::body::SdkBody::from("hello"));
        req.headers_mut().insert("x-amz-checksum-crc32", "NhCmhg==");
        req.headers_mut().insert("x-amz-sdk-checksum-algorithm", "CRC32");
        req.headers_mut().insert("content-type", "application/xml");
        content_md5_instead_of_checksums(&mut req);
        let names: Vec<&str> = req.headers().iter().map(|(name, _)| name).collect();
        assert!(!names.iter().any(|n| n.contains("checksum")), "{names:?}");
        assert_eq!(req.headers().get("content-md5"), Some("XUFAKrxLKna5cZ2REBfFkg=="));
        assert_eq!(req.headers().get("content-type"), Some("application/xml"));
    }

    #[test]
    fn url_encoded_listing_keys() {
        assert_eq!(url_decode("a%20b+c%2Bd%00e/%C3%A9"), "a b c+d\0e/é");
        assert_eq!(url_decode("100%"), "100%");
    }
}
