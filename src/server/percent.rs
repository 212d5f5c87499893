//! Percent-encoding of object keys in URLs (redirect locations, `encoding-type=url`
//! listings) and decoding of request paths and query values.

/// Encodes everything except RFC 3986 unreserved characters and `/`, the way S3
/// clients encode keys in request paths. Spaces become `%20` rather than `+`, so the
/// result decodes correctly with both plain and form-style decoders.
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &byte in key.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub(crate) fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of query parameter `name`, if present (`?flag` yields `""`).
/// `+` is read as a space, as form-encoded query strings use it.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key)? == name).then(|| decode(&value.replace('+', " ")))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let key = "dir/a b+c%é?.txt";
        let encoded = encode_key(key);
        assert_eq!(encoded, "dir/a%20b%2Bc%25%C3%A9%3F.txt");
        assert_eq!(decode(&encoded).as_deref(), Some(key));
    }

    #[test]
    fn decode_rejects_malformed_escapes() {
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%FF"), None);
    }

    #[test]
    fn query_param_finds_flags_and_values() {
        let query = Some("list-type=2&delete&continuation-token=a%2Bb+c");
        assert_eq!(query_param(query, "list-type").as_deref(), Some("2"));
        assert_eq!(query_param(query, "delete").as_deref(), Some(""));
        assert_eq!(query_param(query, "continuation-token").as_deref(), Some("a+b c"));
        assert_eq!(query_param(query, "prefix"), None);
        assert_eq!(query_param(None, "prefix"), None);
    }
}
