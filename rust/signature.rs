//! The `Instapay-Signature` header, parsed natively so the engine can check a whole batch of
//! requests in one call, and so there is one parser: `instapay.signing` calls this one too.
//!
//! `t=<unix seconds>,kid=<key id>,v2=<hex HMAC>` (or `v1=` from clients that send no
//! `Idempotency-Key`): comma-separated `name=value` pairs, whitespace around a pair ignored
//! (Python's `str.strip` set), `t`, `kid` and `v2` at most once, up to eight `v1`, other
//! `v<digits>` schemes skipped, anything else refused. A request carries exactly one MAC, a v1 or
//! a v2; only a v2 covers the `Idempotency-Key` (see `request_message_v2`). A problem is reported
//! as a code and a detail; `instapay.signing` turns them into messages and exceptions. The
//! header of a response or webhook is made here too, in one call (`payload_header`).

use crate::digest;

pub const HEADER_LEN_MAX: usize = 1024;
pub const V1_COUNT_MAX: usize = 8;
pub const TIMESTAMP_DIGITS_MAX: usize = 12;

/// Why a header or request is refused (0 means it is not).
pub const PROBLEM_NONE: u8 = 0;
pub const PROBLEM_MISSING: u8 = 1;
/// Detail: the length in characters.
pub const PROBLEM_TOO_LONG: u8 = 2;
/// Detail: the offending part, as received.
pub const PROBLEM_NOT_PAIR: u8 = 3;
/// Detail: the field name.
pub const PROBLEM_DUPLICATE: u8 = 4;
/// Detail: the field name.
pub const PROBLEM_UNKNOWN_FIELD: u8 = 5;
pub const PROBLEM_NO_TIMESTAMP: u8 = 6;
pub const PROBLEM_BAD_TIMESTAMP: u8 = 7;
/// Detail: how many v1 values there were.
pub const PROBLEM_V1_COUNT: u8 = 8;
pub const PROBLEM_NO_KID: u8 = 9;
/// Detail: how many v1 values a request carried.
pub const PROBLEM_REQUEST_V1_COUNT: u8 = 10;
/// Detail: the timestamp.
pub const PROBLEM_STALE: u8 = 11;
/// Detail: the key id.
pub const PROBLEM_UNKNOWN_KID: u8 = 12;
pub const PROBLEM_MISMATCH: u8 = 13;
pub const PROBLEM_WRONG_LENGTH: u8 = 14;
pub const PROBLEM_NOT_HEX: u8 = 15;
/// A request carries a v1 and a v2: which one vouches for it would be ambiguous.
pub const PROBLEM_TWO_SCHEMES: u8 = 16;
/// The request sends an `Idempotency-Key` under a v1 signature, which does not cover it.
pub const PROBLEM_KEY_UNSIGNED: u8 = 17;

/// Every code by the name Python sees it under (`instapay._core.PROBLEM_*`).
pub const PROBLEMS: [(&str, u8); 18] = [
    ("PROBLEM_NONE", PROBLEM_NONE),
    ("PROBLEM_MISSING", PROBLEM_MISSING),
    ("PROBLEM_TOO_LONG", PROBLEM_TOO_LONG),
    ("PROBLEM_NOT_PAIR", PROBLEM_NOT_PAIR),
    ("PROBLEM_DUPLICATE", PROBLEM_DUPLICATE),
    ("PROBLEM_UNKNOWN_FIELD", PROBLEM_UNKNOWN_FIELD),
    ("PROBLEM_NO_TIMESTAMP", PROBLEM_NO_TIMESTAMP),
    ("PROBLEM_BAD_TIMESTAMP", PROBLEM_BAD_TIMESTAMP),
    ("PROBLEM_V1_COUNT", PROBLEM_V1_COUNT),
    ("PROBLEM_NO_KID", PROBLEM_NO_KID),
    ("PROBLEM_REQUEST_V1_COUNT", PROBLEM_REQUEST_V1_COUNT),
    ("PROBLEM_STALE", PROBLEM_STALE),
    ("PROBLEM_UNKNOWN_KID", PROBLEM_UNKNOWN_KID),
    ("PROBLEM_MISMATCH", PROBLEM_MISMATCH),
    ("PROBLEM_WRONG_LENGTH", PROBLEM_WRONG_LENGTH),
    ("PROBLEM_NOT_HEX", PROBLEM_NOT_HEX),
    ("PROBLEM_TWO_SCHEMES", PROBLEM_TWO_SCHEMES),
    ("PROBLEM_KEY_UNSIGNED", PROBLEM_KEY_UNSIGNED),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: u8,
    pub detail: String,
}

fn problem(code: u8, detail: impl Into<String>) -> Problem {
    Problem {
        code,
        detail: detail.into(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub timestamp_s: u64,
    pub kid: Option<&'a str>,
    pub v1: Vec<&'a str>,
    pub v2: Option<&'a str>,
}

/// The one MAC of a request header, by scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMac<'a> {
    V1(&'a str),
    V2(&'a str),
}

/// The characters Python's `str.strip()` removes: Unicode whitespace plus U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn is_other_scheme(name: &str) -> bool {
    name.len() >= 2 && name.starts_with('v') && name[1..].bytes().all(|b| b.is_ascii_digit())
}

/// # Errors
/// The first `Problem` found, in the order `instapay.signing` documents.
pub fn parse_header(header: &str) -> Result<Header<'_>, Problem> {
    if header.len() > HEADER_LEN_MAX {
        let chars = header.chars().count();
        if chars > HEADER_LEN_MAX {
            return Err(problem(PROBLEM_TOO_LONG, chars.to_string()));
        }
    }
    let (mut timestamp, mut kid, mut v1, mut v2) = (None, None, Vec::new(), None);
    for part in header.split(',') {
        let Some((name, value)) = part.trim_matches(is_python_space).split_once('=') else {
            return Err(problem(PROBLEM_NOT_PAIR, part));
        };
        if name.is_empty() || value.is_empty() {
            return Err(problem(PROBLEM_NOT_PAIR, part));
        }
        match name {
            "v1" => v1.push(value),
            "t" | "kid" | "v2" => {
                let field = match name {
                    "t" => &mut timestamp,
                    "kid" => &mut kid,
                    _ => &mut v2,
                };
                if field.replace(value).is_some() {
                    return Err(problem(PROBLEM_DUPLICATE, name));
                }
            }
            other if is_other_scheme(other) => {}
            other => return Err(problem(PROBLEM_UNKNOWN_FIELD, other)),
        }
    }
    let timestamp = timestamp.ok_or_else(|| problem(PROBLEM_NO_TIMESTAMP, ""))?;
    if timestamp.is_empty()
        || timestamp.len() > TIMESTAMP_DIGITS_MAX
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(problem(PROBLEM_BAD_TIMESTAMP, ""));
    }
    if v1.len() > V1_COUNT_MAX || (v1.is_empty() && v2.is_none()) {
        return Err(problem(PROBLEM_V1_COUNT, v1.len().to_string()));
    }
    Ok(Header {
        timestamp_s: timestamp.parse().expect("at most 12 ASCII digits"),
        kid,
        v1,
        v2,
    })
}

/// A request header: exactly one kid, one MAC (a v1 or a v2), and a timestamp within
/// `tolerance_s` of `now_s`. Returns (timestamp, kid, MAC).
///
/// # Errors
/// The first `Problem` found.
pub fn parse_request_header(
    header: Option<&str>,
    now_s: i64,
    tolerance_s: i64,
) -> Result<(u64, &str, RequestMac<'_>), Problem> {
    let header = parse_header(header.ok_or_else(|| problem(PROBLEM_MISSING, ""))?)?;
    let kid = header.kid.ok_or_else(|| problem(PROBLEM_NO_KID, ""))?;
    let mac = match (&header.v1[..], header.v2) {
        ([], Some(v2)) => RequestMac::V2(v2),
        ([v1], None) => RequestMac::V1(v1),
        (_, Some(_)) => return Err(problem(PROBLEM_TWO_SCHEMES, "")),
        (many, None) => return Err(problem(PROBLEM_REQUEST_V1_COUNT, many.len().to_string())),
    };
    let skew_s = i64::try_from(header.timestamp_s).expect("12 digits fit i64") - now_s;
    if skew_s.abs() > tolerance_s {
        return Err(problem(PROBLEM_STALE, header.timestamp_s.to_string()));
    }
    Ok((header.timestamp_s, kid, mac))
}

/// Each line followed by `\n`, then the body.
fn lines_then_body(lines: &[&str], body: &[u8]) -> Vec<u8> {
    let lines_len: usize = lines.iter().map(|line| line.len() + 1).sum();
    let mut message = Vec::with_capacity(lines_len + body.len());
    for line in lines {
        message.extend_from_slice(line.as_bytes());
        message.push(b'\n');
    }
    message.extend_from_slice(body);
    message
}

/// What a v1 request signature covers: `"<t>\n<METHOD>\n<path>\n" + body`.
pub fn request_message(timestamp_s: u64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    lines_then_body(&[&timestamp_s.to_string(), method, path], body)
}

/// What a v2 request signature covers:
/// `"v2\n<t>\n<METHOD>\n<path>\n<Idempotency-Key, or nothing when none is sent>\n" + body`.
/// The leading `v2` line keeps a v2 MAC from ever being a valid v1 MAC of other bytes.
pub fn request_message_v2(
    timestamp_s: u64,
    method: &str,
    path: &str,
    idempotency_key: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let key = idempotency_key.unwrap_or_default();
    lines_then_body(&["v2", &timestamp_s.to_string(), method, path, key], body)
}

/// The hex MAC of a request and the bytes it must cover; a v1 cannot vouch for a key.
///
/// # Errors
/// `PROBLEM_KEY_UNSIGNED` for a v1 on a request that sends an `Idempotency-Key`.
pub fn signed_message<'a>(
    mac: RequestMac<'a>,
    timestamp_s: u64,
    (method, path): (&str, &str),
    idempotency_key: Option<&str>,
    body: &[u8],
) -> Result<(&'a str, Vec<u8>), Problem> {
    match (mac, idempotency_key) {
        (RequestMac::V1(_), Some(_)) => Err(problem(PROBLEM_KEY_UNSIGNED, "")),
        (RequestMac::V1(v1), None) => Ok((v1, request_message(timestamp_s, method, path, body))),
        (RequestMac::V2(v2), key) => Ok((v2, request_message_v2(timestamp_s, method, path, key, body))),
    }
}

/// The `Instapay-Signature` value of a response or webhook: `t=<t>` then one `,v1=<hex>` per
/// secret (several while a key is rotated), each an HMAC over `"<t>." + body`.
#[must_use]
pub fn payload_header(secrets: &[&[u8]], timestamp_s: u64, body: &[u8]) -> String {
    let mut message = format!("{timestamp_s}.").into_bytes();
    message.extend_from_slice(body);
    let mut header = format!("t={timestamp_s}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&digest::encode_hex(&digest::hmac_sha256(secret, &message)));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

    #[test]
    fn a_payload_header_has_one_v1_per_secret_over_the_timestamp_and_body() {
        let mac = |secret: &[u8]| digest::encode_hex(&digest::hmac_sha256(secret, b"1796000000.{}"));
        assert_eq!(
            payload_header(&[b"old", b"new"], 1_796_000_000, b"{}"),
            format!("t=1796000000,v1={},v1={}", mac(b"old"), mac(b"new"))
        );
    }

    fn code_of(header: &str) -> u8 {
        parse_header(header).map_or_else(|p| p.code, |_| PROBLEM_NONE)
    }

    #[test]
    fn a_request_header_parses_with_spaces_and_other_schemes() {
        let header = format!(" t=0001 , kid=k1,\u{1f}v0=zz,v1={V1} ");
        let parsed = parse_request_header(Some(&header), 1, 0).expect("valid");
        assert_eq!(parsed, (1, "k1", RequestMac::V1(V1)));
        let v2 = format!("t=1,kid=k1,v2={V1}");
        let parsed = parse_request_header(Some(&v2), 1, 0).expect("valid");
        assert_eq!(parsed, (1, "k1", RequestMac::V2(V1)));
    }

    #[test]
    fn a_request_carries_one_mac_of_one_scheme() {
        let request_code = |header: &str| parse_request_header(Some(header), 1, 0).unwrap_err().code;
        assert_eq!(
            request_code(&format!("t=1,kid=k,v1={V1},v2={V1}")),
            PROBLEM_TWO_SCHEMES
        );
        assert_eq!(
            request_code(&format!("t=1,kid=k,v1={V1},v1={V1}")),
            PROBLEM_REQUEST_V1_COUNT
        );
        assert_eq!(code_of(&format!("t=1,kid=k,v2={V1},v2={V1}")), PROBLEM_DUPLICATE);
    }

    #[test]
    fn only_a_v2_covers_the_idempotency_key() {
        let request = ("POST", "/v1/payments");
        let unsigned = signed_message(RequestMac::V1(V1), 7, request, Some("k-1"), b"{}");
        assert_eq!(unsigned.unwrap_err().code, PROBLEM_KEY_UNSIGNED);
        let (_, keyed) = signed_message(RequestMac::V2(V1), 7, request, Some("k-1"), b"{}").unwrap();
        assert_eq!(keyed, b"v2\n7\nPOST\n/v1/payments\nk-1\n{}");
        let (_, keyless) = signed_message(RequestMac::V2(V1), 7, request, None, b"{}").unwrap();
        assert_eq!(keyless, b"v2\n7\nPOST\n/v1/payments\n\n{}");
    }

    #[test]
    fn each_problem_has_its_code() {
        assert_eq!(code_of(""), PROBLEM_NOT_PAIR);
        assert_eq!(code_of("t=1,v1="), PROBLEM_NOT_PAIR);
        assert_eq!(code_of("t=1,t=2,v1=a"), PROBLEM_DUPLICATE);
        assert_eq!(code_of("t=1,sig=a"), PROBLEM_UNKNOWN_FIELD);
        assert_eq!(code_of("t=1,v=a"), PROBLEM_UNKNOWN_FIELD);
        assert_eq!(code_of("kid=k,v1=a"), PROBLEM_NO_TIMESTAMP);
        assert_eq!(code_of("t=+1,v1=a"), PROBLEM_BAD_TIMESTAMP);
        assert_eq!(code_of("t=1234567890123,v1=a"), PROBLEM_BAD_TIMESTAMP);
        assert_eq!(code_of("t=1"), PROBLEM_V1_COUNT);
        assert_eq!(
            code_of(&format!("t=1,{}", "v1=a,".repeat(9).trim_end_matches(','))),
            PROBLEM_V1_COUNT
        );
        assert_eq!(code_of(&format!("t=1,v1={}", "x".repeat(2000))), PROBLEM_TOO_LONG);
        let missing = parse_request_header(None, 0, 300).unwrap_err();
        assert_eq!(missing.code, PROBLEM_MISSING);
        let old = format!("t=1000,kid=k,v1={V1}");
        let stale = parse_request_header(Some(&old), 1301, 300);
        assert_eq!(stale.unwrap_err(), problem(PROBLEM_STALE, "1000"));
    }

    #[test]
    fn the_message_uses_the_parsed_timestamp() {
        assert_eq!(
            request_message(7, "POST", "/v1/payments", b"{}"),
            b"7\nPOST\n/v1/payments\n{}"
        );
    }
}
