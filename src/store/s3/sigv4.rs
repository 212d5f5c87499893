//! SigV4 for the GETs and HEADs sent by `signed_reads.rs`: a request with no body, a
//! path already encoded once, a few headers. The SDK's signer, general as it must be,
//! built its canonical request from dozens of small strings and derived the day's key
//! (four HMACs) for every request: a twentieth of the daemon's CPU in an epoch of small
//! files. Here the canonical request is one string and the day's key is kept until the
//! date or the credentials change. The tests check every header against the SDK's
//! signer, byte for byte.

use super::wire::{percent_encode, url_decode};
use aws_credential_types::Credentials;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::time::SystemTime;

type HmacSha256 = Hmac<Sha256>;

/// SHA-256 of an empty body, the payload hash of every request signed here.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub(super) struct SigV4 {
    /// The scope's region and service, as the bucket's endpoint names them.
    pub(super) region: String,
    pub(super) service: String,
    /// The day's signing key, with what it was derived from.
    day_key: Mutex<Option<DayKey>>,
}

struct DayKey {
    date: String,
    secret: String,
    mac: HmacSha256,
}

impl SigV4 {
    pub(super) fn new(region: &str, service: &str) -> SigV4 {
        SigV4 {
            region: region.to_string(),
            service: service.to_string(),
            day_key: Mutex::new(None),
        }
    }

    /// The headers that sign `method uri` with `headers` (lower-case names, sent as
    /// they are): `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` with a
    /// session token, and `authorization`.
    pub(super) fn sign(
        &self,
        method: &str,
        uri: &http::Uri,
        headers: &[(&str, &str)],
        credentials: &Credentials,
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        let stamp = amz_date(now);
        let date = &stamp[..8];
        let mut signed: Vec<(&str, String)> = headers.iter().map(|(n, v)| (*n, normalized(v))).collect();
        signed.push(("host", host_of(uri)));
        signed.push(("x-amz-content-sha256", EMPTY_SHA256.to_string()));
        signed.push(("x-amz-date", stamp.clone()));
        if let Some(token) = credentials.session_token() {
            signed.push(("x-amz-security-token", normalized(token)));
        }
        signed.sort_by(|a, b| a.0.cmp(b.0));
        let names = signed.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(";");

        let mut canonical = String::with_capacity(512);
        // S3 signs the path as sent (its key encoded once), without normalizing `.` or `//`.
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        let _ = write!(canonical, "{method}\n{path}\n{}\n", canonical_query(uri.query()));
        for (name, value) in &signed {
            let _ = writeln!(canonical, "{name}:{value}");
        }
        let _ = write!(canonical, "\n{names}\n{EMPTY_SHA256}");

        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut mac = self.day_mac(date, credentials.secret_access_key());
        mac.update(to_sign.as_bytes());
        let signature = hex(&mac.finalize().into_bytes());

        let mut out = vec![
            ("x-amz-date", stamp.clone()),
            ("x-amz-content-sha256", EMPTY_SHA256.to_string()),
        ];
        if let Some(token) = credentials.session_token() {
            out.push(("x-amz-security-token", token.to_string()));
        }
        out.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
                credentials.access_key_id()
            ),
        ));
        out
    }

    /// An HMAC keyed with the day's signing key, derived again only for a new date or
    /// secret.
    fn day_mac(&self, date: &str, secret: &str) -> HmacSha256 {
        let mut kept = self.day_key.lock();
        if let Some(key) = kept.as_ref()
            && key.date == date
            && key.secret == secret
        {
            return key.mac.clone();
        }
        let step = |key: &[u8], data: &str| {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
            mac.update(data.as_bytes());
            mac.finalize().into_bytes()
        };
        let k = step(format!("AWS4{secret}").as_bytes(), date);
        let k = step(&k, &self.region);
        let k = step(&k, &self.service);
        let k = step(&k, "aws4_request");
        let mac = HmacSha256::new_from_slice(&k).expect("HMAC takes a key of any length");
        *kept = Some(DayKey {
            date: date.to_string(),
            secret: secret.to_string(),
            mac: mac.clone(),
        });
        mac
    }
}

/// `YYYYMMDDTHHMMSSZ` of `now`, in UTC.
fn amz_date(now: SystemTime) -> String {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The Host header the request is sent with: the port only where it is not the scheme's.
fn host_of(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_string(),
    }
}

/// A header value as SigV4 signs it: trimmed, inner runs of spaces made one.
fn normalized(value: &str) -> String {
    if !value.starts_with(' ') && !value.ends_with(' ') && !value.contains("  ") {
        return value.to_string();
    }
    value.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The query's parameters decoded, sorted and encoded again as SigV4 wants them.
fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_encode(url_decode(name).as_bytes(), b""),
                percent_encode(url_decode(value).as_bytes(), b""),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case hex. Through `write!` a byte at a time it was a third of the signing's
/// CPU in an `ls -l` of 10,000 files (a HEAD each).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    use aws_smithy_runtime_api::client::identity::Identity;
    use std::time::Duration;

    /// The headers the SDK's signer adds to the same request, with the settings
    /// `signed_reads.rs` used before it signed by itself.
    fn sdk_signed(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        credentials: &Credentials,
        region: &str,
        now: SystemTime,
    ) -> http::HeaderMap {
        let identity: Identity = credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(method, uri, headers.iter().copied(), SignableBody::Bytes(&[])).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(()).unwrap();
        instructions.apply_to_request_http1x(&mut request);
        let mut added = request.headers().clone();
        for (name, _) in headers {
            added.remove(*name);
        }
        added
    }

    fn ours(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        credentials: &Credentials,
        now: SystemTime,
        signer: &SigV4,
    ) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in signer.sign(method, &uri.parse().unwrap(), headers, credentials, now) {
            map.insert(name, value.parse().unwrap());
        }
        map
    }

    /// A method, a URI and the request's own headers.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn every_header_is_the_sdk_signer_s() {
        let with_token = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("TOKEN/+=".into()),
            None,
            "t",
        );
        let without = Credentials::new("AKID2", "another secret", None, None, "t");
        let times = [
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160),
            SystemTime::UNIX_EPOCH + Duration::from_secs(951_825_600), // 2000-02-29
            SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_799), // 2099-12-31 23:59:59
            SystemTime::now(),
        ];
        let cases: &[Case] = &[
            (
                "GET",
                "http://127.0.0.1:9000/vol/a%20b/%C3%A9%2B.txt",
                &[("range", "bytes=0-9")],
            ),
            (
                "GET",
                "http://127.0.0.1:9000/vol/k",
                &[("range", "bytes=5-1000"), ("if-match", "\"e1-3\"")],
            ),
            ("HEAD", "https://vol.s3.us-east-1.amazonaws.com/dir/file%21", &[]),
            ("GET", "https://vol.storage.example.com/?max-keys=16", &[]),
            ("GET", "http://host:80/b/?prefix=a%2Fb&max-keys=3&list-type", &[]),
            ("GET", "https://host:8443/b/x", &[("if-match", "  \"a  b\" ")]),
        ];
        for (region, signer) in [
            ("us-east-1", SigV4::new("us-east-1", "s3")),
            ("EU-NORTH", SigV4::new("EU-NORTH", "s3")),
        ] {
            for credentials in [&with_token, &without] {
                for now in times {
                    for (method, uri, headers) in cases {
                        let want = sdk_signed(method, uri, headers, credentials, region, now);
                        let got = ours(method, uri, headers, credentials, now, &signer);
                        assert_eq!(got, want, "{method} {uri} {headers:?} at {now:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_day_key_follows_the_date_and_the_secret() {
        let signer = SigV4::new("us-east-1", "s3");
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let next_day = day + Duration::from_secs(86_400);
        let a = Credentials::new("AK", "one", None, None, "t");
        let b = Credentials::new("AK", "two", None, None, "t");
        let uri: http::Uri = "http://h/b/k".parse().unwrap();
        for (credentials, now) in [(&a, day), (&a, next_day), (&b, next_day), (&a, day)] {
            let want = sdk_signed("GET", "http://h/b/k", &[], credentials, "us-east-1", now);
            let got = signer.sign("GET", &uri, &[], credentials, now);
            let auth = &got.iter().find(|(n, _)| *n == "authorization").unwrap().1;
            assert_eq!(auth, want["authorization"].to_str().unwrap());
        }
    }

    #[test]
    fn dates_are_those_of_the_calendar() {
        assert_eq!(amz_date(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)),
            "20150830T123600Z"
        );
        assert_eq!(
            amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(951_825_600)),
            "20000229T120000Z"
        );
    }
}
