//! The key ring: merchant signing keys by key id (kid), kept as precomputed HMAC states, with
//! batch signing and constant-time batch verification.
//!
//! Readers take a snapshot (`Arc`) of the key map, so a batch holds no lock while it hashes
//! without the GIL; `insert`/`remove` copy the map when a snapshot is in use (copy on write).
//! Key rotation is two kids valid side by side, not one kid with two secrets.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::body::{id_problem, IdProblem, ID_LEN_MAX};
use crate::convert::{bytes_items, same_lengths, sequence_items, text_items, typed_item};
use crate::digest::{decode_hex_mac, hmac_work, Digest, HmacKey, MacFormat, DIGEST_LEN};
use crate::error::{CoreError, CoreResult};
use crate::parallel::{map_indexed, run_batch};
use crate::signature::{
    parse_request_header, signed_message, Problem, PROBLEM_MISMATCH, PROBLEM_NOT_HEX, PROBLEM_UNKNOWN_KID,
    PROBLEM_WRONG_LENGTH,
};

pub const KEYS_MAX: usize = 65_536;
pub const KID_LEN_MAX: usize = ID_LEN_MAX;
/// Longer secrets are legal HMAC keys (they are hashed first) but only ever a mistake here.
pub const SECRET_LEN_MAX: usize = 1024;

/// Per-item results of `verify_batch` / `verify_batch_hex`.
pub const VERIFY_VALID: u8 = 0;
pub const VERIFY_MISMATCH: u8 = 1;
pub const VERIFY_UNKNOWN_KID: u8 = 2;
pub const VERIFY_WRONG_LENGTH: u8 = MacFormat::WrongLength as u8;
pub const VERIFY_NOT_HEX: u8 = MacFormat::NotHex as u8;

type KeyMap = HashMap<Box<str>, HmacKey>;

/// Key ids follow the id rules of the API (`body::id_problem`).
pub fn check_kid(kid: &str) -> CoreResult<()> {
    match id_problem(kid) {
        None => Ok(()),
        Some(IdProblem::Length) => Err(CoreError::InvalidKid {
            reason: "must be 1 to 255 characters long",
        }),
        Some(IdProblem::Characters) => Err(CoreError::InvalidKid {
            reason: "must be printable ASCII without spaces",
        }),
    }
}

pub fn check_secret(secret: &[u8]) -> CoreResult<()> {
    if secret.is_empty() {
        return Err(CoreError::InvalidSecret {
            reason: "must not be empty",
        });
    }
    if secret.len() > SECRET_LEN_MAX {
        return Err(CoreError::InvalidSecret {
            reason: "must be at most 1024 bytes",
        });
    }
    Ok(())
}

/// Thread-safe: the class is frozen and the map sits behind a lock (see the module comment), so
/// several Python threads may sign, verify and rotate keys at once.
#[pyclass(frozen, module = "instapay._core")]
pub struct KeyRing {
    keys: RwLock<Arc<KeyMap>>,
}

/// What verifying one batch item comes down to once its kid and MAC have been read.
enum Check<'k> {
    Decided(u8),
    Compare(&'k HmacKey, Digest),
}

impl KeyRing {
    fn snapshot(&self) -> Arc<KeyMap> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn update<R>(&self, change: impl FnOnce(&mut KeyMap) -> R) -> R {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        change(Arc::make_mut(&mut keys))
    }

    /// Per request, the authenticated kid or the `Problem` refusing it: headers parsed and
    /// timestamps checked against `clock` (now, tolerance), then every MAC computed in one batch
    /// (spread over threads, without the GIL, when the batch is large enough).
    pub(crate) fn verify_parts(
        &self,
        py: Python<'_>,
        requests: &[SignedParts<'_>],
        clock: (i64, i64),
    ) -> Vec<Result<String, Problem>> {
        let snapshot = self.snapshot();
        let checks: Vec<RequestCheck<'_>> = requests
            .iter()
            .map(|request| request_check(&snapshot, request, clock))
            .collect();
        let work_bytes = checks
            .iter()
            .map(|check| match check {
                RequestCheck::Compare { message, .. } => hmac_work(message.len()),
                RequestCheck::Refused(_) => 0,
            })
            .sum();
        let valid = run_batch(py, work_bytes, || {
            map_indexed(checks.len(), work_bytes, |index| match &checks[index] {
                RequestCheck::Compare {
                    key, mac, message, ..
                } => key.verify(message, mac),
                RequestCheck::Refused(_) => false,
            })
        });
        checks
            .into_iter()
            .zip(valid)
            .map(|(check, valid)| match check {
                RequestCheck::Compare { kid, .. } if valid => Ok(kid),
                RequestCheck::Compare { .. } => Err(Problem {
                    code: PROBLEM_MISMATCH,
                    detail: String::new(),
                }),
                RequestCheck::Refused(problem) => Err(problem),
            })
            .collect()
    }
}

/// What a request signature covers, as received (`None`: no header, no `Idempotency-Key`).
pub(crate) struct SignedParts<'a> {
    pub(crate) header: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

/// Resolves the kids of a batch; runs of one kid (the usual case) skip the hash lookup. A kid
/// that is not even valid UTF-8 (a lone surrogate from a hostile header) is simply unknown.
fn resolve_kids<'k>(keys: &'k KeyMap, kids: &[Bound<'_, PyAny>]) -> CoreResult<Vec<Option<&'k HmacKey>>> {
    let mut resolved = Vec::with_capacity(kids.len());
    let mut last: Option<(&str, Option<&'k HmacKey>)> = None;
    for (index, item) in kids.iter().enumerate() {
        let kid = typed_item::<PyString>("kids", index, "str", item)?;
        let key = match (kid.to_str(), last) {
            (Err(_), _) => None,
            (Ok(kid), Some((last_kid, key))) if kid == last_kid => key,
            (Ok(kid), _) => {
                let key = keys.get(kid);
                last = Some((kid, key));
                key
            }
        };
        resolved.push(key);
    }
    Ok(resolved)
}

fn hmac_work_of(messages: &[PyBackedBytes]) -> usize {
    messages.iter().map(|message| hmac_work(message.len())).sum()
}

/// Reads the MACs, hashes and compares; `read_mac` turns one Python MAC into a digest or a status.
fn verify_items<'py>(
    py: Python<'py>,
    keys: &KeyMap,
    kids: &Bound<'_, PyAny>,
    messages: &Bound<'_, PyAny>,
    macs: &Bound<'_, PyAny>,
    read_mac: impl Fn(usize, &Bound<'_, PyAny>) -> CoreResult<Result<Digest, MacFormat>>,
) -> PyResult<Bound<'py, PyList>> {
    let kids = sequence_items("kids", "a sequence of str", kids)?;
    let messages = bytes_items("messages", messages)?;
    let macs = sequence_items("macs", "a sequence of MACs", macs)?;
    same_lengths(
        "kids, messages and macs",
        &[kids.len(), messages.len(), macs.len()],
    )?;

    let keys_by_item = resolve_kids(keys, &kids)?;
    let mut work_bytes = 0;
    let mut checks = Vec::with_capacity(macs.len());
    for (index, (key, mac)) in keys_by_item.into_iter().zip(&macs).enumerate() {
        let mac = read_mac(index, mac)?;
        checks.push(match (key, mac) {
            (None, _) => Check::Decided(VERIFY_UNKNOWN_KID),
            (Some(_), Err(format)) => Check::Decided(format as u8),
            (Some(key), Ok(mac)) => {
                work_bytes += hmac_work(messages[index].len());
                Check::Compare(key, mac)
            }
        });
    }
    let statuses = run_batch(py, work_bytes, || {
        map_indexed(checks.len(), work_bytes, |index| match &checks[index] {
            Check::Decided(status) => *status,
            Check::Compare(key, mac) if key.verify(&messages[index], mac) => VERIFY_VALID,
            Check::Compare(..) => VERIFY_MISMATCH,
        })
    });
    // A list of ints, not the `bytes` a `Vec<u8>` would become.
    PyList::new(py, statuses)
}

#[pymethods]
impl KeyRing {
    #[new]
    fn new() -> Self {
        Self {
            keys: RwLock::new(Arc::new(KeyMap::new())),
        }
    }

    /// Adds a key, or replaces the secret of an existing kid.
    fn insert(&self, kid: &str, secret: &[u8]) -> PyResult<()> {
        check_kid(kid)?;
        check_secret(secret)?;
        let key = HmacKey::new(secret);
        self.update(|keys| {
            if keys.len() >= KEYS_MAX && !keys.contains_key(kid) {
                return Err(CoreError::KeyRingFull { max: KEYS_MAX });
            }
            keys.insert(kid.into(), key);
            Ok(())
        })?;
        Ok(())
    }

    fn remove(&self, kid: &str) -> bool {
        self.update(|keys| keys.remove(kid).is_some())
    }

    fn __len__(&self) -> usize {
        self.snapshot().len()
    }

    fn __contains__(&self, kid: &Bound<'_, PyAny>) -> bool {
        kid.extract::<&str>()
            .is_ok_and(|kid| self.snapshot().contains_key(kid))
    }

    /// The key ids, sorted; never the secrets.
    fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.snapshot().keys().map(ToString::to_string).collect();
        kids.sort_unstable();
        kids
    }

    fn __repr__(&self) -> String {
        format!("<KeyRing with {} keys>", self.snapshot().len())
    }

    /// 32-byte HMAC-SHA256 of each message under its kid's key; an unknown kid is a `KeyError`.
    fn sign_batch<'py>(
        &self,
        py: Python<'py>,
        kids: &Bound<'py, PyAny>,
        messages: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let kid_items = sequence_items("kids", "a sequence of str", kids)?;
        let messages = bytes_items("messages", messages)?;
        same_lengths("kids and messages", &[kid_items.len(), messages.len()])?;
        let snapshot = self.snapshot();
        let keys = resolve_kids(&snapshot, &kid_items)?
            .into_iter()
            .enumerate()
            .map(|(index, key)| {
                key.ok_or_else(|| CoreError::UnknownKid {
                    index,
                    kid: kid_items[index].to_string(),
                })
            })
            .collect::<CoreResult<Vec<&HmacKey>>>()?;
        let work_bytes = hmac_work_of(&messages);
        let macs = run_batch(py, work_bytes, || {
            map_indexed(keys.len(), work_bytes, |index| keys[index].mac(&messages[index]))
        });
        PyList::new(py, macs.iter().map(|mac| PyBytes::new(py, mac)))
    }

    /// Per item: 0 valid, 1 wrong MAC, 2 unknown kid, 3 MAC not 32 bytes.
    fn verify_batch<'py>(
        &self,
        py: Python<'py>,
        kids: &Bound<'py, PyAny>,
        messages: &Bound<'py, PyAny>,
        macs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        verify_items(py, &self.snapshot(), kids, messages, macs, |index, mac| {
            let mac = typed_item::<PyBytes>("macs", index, "bytes", mac)?;
            Ok(<Digest>::try_from(mac.as_bytes()).map_err(|_| MacFormat::WrongLength))
        })
    }

    /// Checks whole signed requests: each `Instapay-Signature` header (None when absent) is
    /// parsed, its timestamp checked against `now_s`, its message built (with the request's
    /// `Idempotency-Key`, None when it sends none) and its MAC verified.
    /// Per request, the authenticated kid, or `(problem code, detail)` (see `signature.rs`).
    #[allow(clippy::too_many_arguments)]
    fn verify_requests<'py>(
        &self,
        py: Python<'py>,
        headers: &Bound<'py, PyAny>,
        methods: &Bound<'py, PyAny>,
        paths: &Bound<'py, PyAny>,
        idempotency_keys: &Bound<'py, PyAny>,
        bodies: &Bound<'py, PyAny>,
        now_s: i64,
        tolerance_s: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let headers = text_items("headers", headers, true)?;
        let methods = text_items("methods", methods, false)?;
        let paths = text_items("paths", paths, false)?;
        let keys = text_items("idempotency_keys", idempotency_keys, true)?;
        let bodies = bytes_items("bodies", bodies)?;
        same_lengths(
            "headers, methods, paths, idempotency_keys and bodies",
            &[
                headers.len(),
                methods.len(),
                paths.len(),
                keys.len(),
                bodies.len(),
            ],
        )?;
        let requests: Vec<SignedParts<'_>> = (0..headers.len())
            .map(|index| SignedParts {
                header: headers[index].as_deref(),
                // Methods and paths were read with `none_allowed = false`: always `Some`.
                method: methods[index].as_deref().unwrap_or_default(),
                path: paths[index].as_deref().unwrap_or_default(),
                idempotency_key: keys[index].as_deref(),
                body: &bodies[index],
            })
            .collect();
        let verdicts = self.verify_parts(py, &requests, (now_s, tolerance_s));
        let answers = verdicts.iter().map(|verdict| match verdict {
            Ok(kid) => Ok(PyString::new(py, kid).into_any()),
            Err(problem) => (problem.code, problem.detail.as_str())
                .into_pyobject(py)
                .map(Bound::into_any),
        });
        PyList::new(py, answers.collect::<PyResult<Vec<_>>>()?)
    }

    /// Like `verify_batch` with hex MACs as they arrive in headers: 4 when a MAC is not hex.
    fn verify_batch_hex<'py>(
        &self,
        py: Python<'py>,
        kids: &Bound<'py, PyAny>,
        messages: &Bound<'py, PyAny>,
        macs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        verify_items(py, &self.snapshot(), kids, messages, macs, |index, mac| {
            let text = typed_item::<PyString>("macs", index, "str", mac)?;
            Ok(text.to_str().map_or(Err(MacFormat::NotHex), decode_hex_mac))
        })
    }
}

/// One request of `verify_requests` once its header is read: refused, or to be checked.
enum RequestCheck<'k> {
    Refused(Problem),
    Compare {
        kid: String,
        key: &'k HmacKey,
        mac: Digest,
        message: Vec<u8>,
    },
}

fn request_check<'k>(
    keys: &'k KeyMap,
    request: &SignedParts<'_>,
    (now_s, tolerance_s): (i64, i64),
) -> RequestCheck<'k> {
    let refused = |code, detail: &str| {
        RequestCheck::Refused(Problem {
            code,
            detail: detail.to_owned(),
        })
    };
    let (timestamp_s, kid, mac) = match parse_request_header(request.header, now_s, tolerance_s) {
        Ok(parsed) => parsed,
        Err(problem) => return RequestCheck::Refused(problem),
    };
    let Some(key) = keys.get(kid) else {
        return refused(PROBLEM_UNKNOWN_KID, kid);
    };
    let target = (request.method, request.path);
    let signed = signed_message(mac, timestamp_s, target, request.idempotency_key, request.body);
    let (hex, message) = match signed {
        Ok(signed) => signed,
        Err(problem) => return RequestCheck::Refused(problem),
    };
    match decode_hex_mac(hex) {
        Err(MacFormat::WrongLength) => refused(PROBLEM_WRONG_LENGTH, ""),
        Err(MacFormat::NotHex) => refused(PROBLEM_NOT_HEX, ""),
        Ok(mac) => RequestCheck::Compare {
            kid: kid.to_owned(),
            key,
            mac,
            message,
        },
    }
}

const _: () = assert!(DIGEST_LEN == 32, "the statuses above speak of 32-byte MACs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_follow_the_id_rules() {
        assert!(check_kid("merchant-1_key.2024").is_ok());
        assert!(check_kid(&"k".repeat(KID_LEN_MAX)).is_ok());
        assert!(check_kid("").is_err());
        assert!(check_kid(&"k".repeat(KID_LEN_MAX + 1)).is_err());
        assert!(check_kid("with space").is_err());
        assert!(check_kid("tab\there").is_err());
        assert!(check_kid("clé").is_err());
    }

    #[test]
    fn secrets_are_non_empty_and_bounded() {
        assert!(check_secret(b"s").is_ok());
        assert!(check_secret(&[7; SECRET_LEN_MAX]).is_ok());
        assert!(check_secret(b"").is_err());
        assert!(check_secret(&[7; SECRET_LEN_MAX + 1]).is_err());
    }

    #[test]
    fn removing_a_key_leaves_earlier_snapshots_intact() {
        let ring = KeyRing::new();
        ring.update(|keys| keys.insert("a".into(), HmacKey::new(b"secret")));
        let before = ring.snapshot();
        assert!(ring.remove("a"));
        assert!(before.contains_key("a"));
        assert!(!ring.snapshot().contains_key("a"));
    }
}
