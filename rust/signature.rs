//! The `Instapay-Signature` header, parsed natively so the engine can check a whole batch of
//! requests in one call, and so there is one parser: `instapay.signing` calls this one too.
//!
//! `t=<unix seconds>,kid=<key id>,v1=<hex HMAC>`: comma-separated `name=value` pairs, whitespace
//! around a pair ignored (Python's `str.strip` set), `t` and `kid` at most once, up to eight
//! `v1`, other `v<digits>` schemes skipped, anything else refused. A problem is reported as a
//! code and a detail; `instapay.signing` turns them into messages and exceptions.

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

/// Every code by the name Python sees it under (`instapay._core.PROBLEM_*`).
pub const PROBLEMS: [(&str, u8); 16] = [
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
    let (mut timestamp, mut kid, mut v1) = (None, None, Vec::new());
    for part in header.split(',') {
        let Some((name, value)) = part.trim_matches(is_python_space).split_once('=') else {
            return Err(problem(PROBLEM_NOT_PAIR, part));
        };
        if name.is_empty() || value.is_empty() {
            return Err(problem(PROBLEM_NOT_PAIR, part));
        }
        match name {
            "v1" => v1.push(value),
            "t" | "kid" => {
                let field = if name == "t" { &mut timestamp } else { &mut kid };
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
    if !(1..=V1_COUNT_MAX).contains(&v1.len()) {
        return Err(problem(PROBLEM_V1_COUNT, v1.len().to_string()));
    }
    Ok(Header {
        timestamp_s: timestamp.parse().expect("at most 12 ASCII digits"),
        kid,
        v1,
    })
}

/// A request header: exactly one kid and one v1, and a timestamp within `tolerance_s` of
/// `now_s`. Returns (timestamp, kid, v1).
///
/// # Errors
/// The first `Problem` found.
pub fn parse_request_header(
    header: Option<&str>,
    now_s: i64,
    tolerance_s: i64,
) -> Result<(u64, &str, &str), Problem> {
    let header = parse_header(header.ok_or_else(|| problem(PROBLEM_MISSING, ""))?)?;
    let kid = header.kid.ok_or_else(|| problem(PROBLEM_NO_KID, ""))?;
    let [v1] = header.v1[..] else {
        return Err(problem(PROBLEM_REQUEST_V1_COUNT, header.v1.len().to_string()));
    };
    let skew_s = i64::try_from(header.timestamp_s).expect("12 digits fit i64") - now_s;
    if skew_s.abs() > tolerance_s {
        return Err(problem(PROBLEM_STALE, header.timestamp_s.to_string()));
    }
    Ok((header.timestamp_s, kid, v1))
}

/// What a request signature covers: `"<t>\n<METHOD>\n<path>\n" + body`.
pub fn request_message(timestamp_s: u64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(32 + method.len() + path.len() + body.len());
    message.extend_from_slice(timestamp_s.to_string().as_bytes());
    for part in [method, path] {
        message.push(b'\n');
        message.extend_from_slice(part.as_bytes());
    }
    message.push(b'\n');
    message.extend_from_slice(body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

    fn code_of(header: &str) -> u8 {
        parse_header(header).map_or_else(|p| p.code, |_| PROBLEM_NONE)
    }

    #[test]
    fn a_request_header_parses_with_spaces_and_other_schemes() {
        let header = format!(" t=0001 , kid=k1,\u{1f}v0=zz,v1={V1} ");
        let parsed = parse_request_header(Some(&header), 1, 0).expect("valid");
        assert_eq!(parsed, (1, "k1", V1));
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
