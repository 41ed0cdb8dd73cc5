//! The idempotency index: for every request, is its key new, a replay of a finished request, a
//! reuse with other content, or still in flight? Exactly-once payments rest on this answer.
//!
//! Per key the index keeps a keyed 128-bit SipHash-1-3 of the key (never the key itself), the
//! first 16 bytes of the request's SHA-256 fingerprint, the engine's u64 reference to the stored
//! response and the reservation time: 48 bytes in the finished ring, plus 4/3 of an 8-byte bucket
//! of the hash table that points at it (`table.rs`): under 59 bytes per key when full.

mod index;
mod pending;
mod ring;
mod snapshot;
mod table;
mod tenants;

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

pub use self::index::{
    Index, KeyHasher, Outcome, Shares, RESERVE_FULL, RESERVE_IN_FLIGHT, RESERVE_MISMATCH, RESERVE_NEW,
    RESERVE_REPLAY, RESERVE_TENANT_FULL,
};
use self::ring::Finished;
use self::tenants::{TenantId, NO_TENANT};
pub use self::tenants::{TENANT_KEYS_MIN, TENANT_SHARE_PERCENT_DEFAULT};
use crate::convert::{read_bytes_items, read_items, same_lengths, typed_item, u64_items};
use crate::error::{CoreError, CoreResult};
use crate::parallel::detach_when;

/// The engine scopes a client's key by merchant and route (`<merchant id>\0r:<payment id>:<key>`,
/// each id up to 255 bytes), so keys run past 255 bytes; only their hash is stored, so a longer
/// key costs nothing but the hashing.
pub const KEY_LEN_MAX: usize = 1024;
/// Requests are fingerprinted with SHA-256.
pub const FINGERPRINT_LEN: usize = 32;
/// 1 G keys would take about 59 GB; the bound keeps table handles in 31 bits.
pub const CAPACITY_MAX: usize = 1 << 30;
/// 24 h, the retention Stripe documents for idempotency keys.
pub const TTL_SECONDS_DEFAULT: u64 = 24 * 60 * 60;
pub const TTL_SECONDS_MAX: u64 = 10 * 366 * TTL_SECONDS_DEFAULT;
/// Below this many items a batch takes a few microseconds: releasing the GIL does not pay.
const DETACH_ITEMS_MIN: usize = 64;

pub type KeyHash = [u64; 2];
/// The first 16 bytes of the request's SHA-256 fingerprint. A fingerprint is only ever compared
/// with the one stored under the same key, so an accidental match needs a 2^-128 coincidence, and
/// a deliberate one a 2^64-work collision search by the merchant against its own requests (the
/// requests are signed), which would only get the merchant its own earlier answer.
pub type Fingerprint = [u8; 16];
pub type Seed = [u8; 16];

fn read_fingerprint(index: usize, fingerprint: &[u8]) -> CoreResult<Fingerprint> {
    if fingerprint.len() != FINGERPRINT_LEN {
        return Err(CoreError::FingerprintLength {
            index,
            len: fingerprint.len(),
        });
    }
    Ok(fingerprint[..size_of::<Fingerprint>()]
        .try_into()
        .expect("sliced to length"))
}

fn check_key(index: usize, key: &[u8]) -> CoreResult<()> {
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return Err(CoreError::KeyLength {
            index,
            len: key.len(),
        });
    }
    Ok(())
}

/// Reservation times are kept in 32 bits (see `ring::Finished`).
fn checked_now(now_s: u64) -> CoreResult<u32> {
    u32::try_from(now_s).map_err(|_| CoreError::OutOfRange {
        what: "now_s",
        value: now_s,
        min: 0,
        max: u64::from(u32::MAX),
    })
}

fn random_seed() -> CoreResult<Seed> {
    let mut seed = Seed::default();
    getrandom::fill(&mut seed).map_err(|error| CoreError::NoEntropy(error.to_string()))?;
    Ok(seed)
}

/// Thread-safe: frozen, with the index behind a mutex. The engine drives it from one thread;
/// calls from several threads are serialised, and a batch holds the mutex without the GIL.
#[pyclass(frozen, module = "instapay._core")]
pub struct IdempotencyIndex {
    /// A copy of the index's, so keys are hashed while they are read, before the lock.
    key_hasher: KeyHasher,
    index: Mutex<Index>,
}

/// An idempotency key as a logged record holds it, read back by a replay: restored finished,
/// with the record's LSN as its reference (`IdempotencyIndex::restore_logged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedKey<'a> {
    pub key: &'a [u8],
    pub fingerprint: Fingerprint,
    pub created_s: u32,
    /// Whose share the key counts in: the merchant of the record.
    pub tenant: &'a [u8],
    pub lsn: u64,
}

impl IdempotencyIndex {
    /// Restores keys read back from the log, in log order, as `recovery._restore_keys` does
    /// (`Index::restore_logged`): a key already held is left as it is, and over a share
    /// (changed since) a key is kept all the same, or a retry of its request would apply twice.
    ///
    /// # Errors
    /// A key or tenant name of a length the index refuses (nothing is restored), or a key the
    /// index has no room for (`Index::restore_logged`).
    pub(crate) fn restore_logged(&self, keys: &[LoggedKey<'_>]) -> CoreResult<()> {
        let mut index = self.lock()?;
        let mut entries = Vec::with_capacity(keys.len());
        // The keys are mostly one merchant's: its id is looked up once.
        let mut last: Option<(&[u8], TenantId)> = None;
        for (at, logged) in keys.iter().enumerate() {
            check_key(at, logged.key)?;
            let tenant = match last {
                Some((name, id)) if name == logged.tenant => id,
                _ => index.tenants_mut().intern(at, logged.tenant)?,
            };
            last = Some((logged.tenant, tenant));
            entries.push(Finished {
                key: self.key_hasher.hash(logged.key),
                fingerprint: logged.fingerprint,
                reference: logged.lsn,
                created_s: logged.created_s,
                tenant,
            });
        }
        index.restore_logged(entries)
    }

    /// The index, locked: for the batch stage (`machine_py`), which takes it after the ledger's
    /// and the results' locks.
    pub(crate) fn lock(&self) -> CoreResult<std::sync::MutexGuard<'_, Index>> {
        self.index.lock().map_err(|_| CoreError::Poisoned)
    }

    pub(crate) fn key_hasher(&self) -> KeyHasher {
        self.key_hasher
    }

    fn with_index<R>(&self, use_index: impl FnOnce(&mut Index) -> R) -> CoreResult<R> {
        let mut index = self.lock()?;
        Ok(use_index(&mut index))
    }

    fn from_index(index: Index) -> Self {
        Self {
            key_hasher: index.key_hasher(),
            index: Mutex::new(index),
        }
    }

    /// The tenant id of every name (numbering new ones), or `NO_TENANT` for each of `len` keys.
    fn tenant_ids(&self, tenants: Option<&Bound<'_, PyAny>>, len: usize) -> PyResult<Vec<TenantId>> {
        let Some(tenants) = tenants else {
            return Ok(vec![NO_TENANT; len]);
        };
        let mut index = self.lock()?;
        // A batch is mostly one merchant's, one `str` object: its id is looked up once.
        let mut last: Option<(Bound<'_, PyAny>, TenantId)> = None;
        read_items("tenants", "a sequence of str", tenants, |at, item| {
            if let Some((object, id)) = &last {
                if object.is(item) {
                    return Ok(*id);
                }
            }
            let name = typed_item::<PyString>("tenants", at, "str", item)?.to_str()?;
            let id = index.tenants_mut().intern(at, name.as_bytes())?;
            last = Some((item.clone(), id));
            Ok(id)
        })
    }
}

#[pymethods]
impl IdempotencyIndex {
    #[new]
    #[pyo3(signature = (
        capacity_max, ttl_seconds = TTL_SECONDS_DEFAULT, tenant_share_percent = TENANT_SHARE_PERCENT_DEFAULT
    ))]
    fn new(capacity_max: u64, ttl_seconds: u64, tenant_share_percent: u64) -> PyResult<Self> {
        Ok(Self::from_index(Index::new(
            capacity_max,
            ttl_seconds,
            tenant_share_percent,
            random_seed()?,
        )?))
    }

    #[pyo3(signature = (keys, fingerprints, now_s, tenants = None, *, enforce_shares = true))]
    fn reserve_batch<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        fingerprints: &Bound<'py, PyAny>,
        now_s: u64,
        tenants: Option<&Bound<'py, PyAny>>,
        enforce_shares: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let now_s = checked_now(now_s)?;
        let key_hashes = read_bytes_items("keys", keys, |index, key| {
            check_key(index, key)?;
            Ok(self.key_hasher.hash(key))
        })?;
        let fingerprints = read_bytes_items("fingerprints", fingerprints, read_fingerprint)?;
        let tenant_ids = self.tenant_ids(tenants, key_hashes.len())?;
        let len = same_lengths(
            "keys, fingerprints and tenants",
            &[key_hashes.len(), fingerprints.len(), tenant_ids.len()],
        )?;
        let shares = if enforce_shares {
            Shares::Enforced
        } else {
            Shares::Ignored
        };
        let outcomes = detach_when(py, len >= DETACH_ITEMS_MIN, || {
            self.with_index(|index| {
                index.reserve_batch(&key_hashes, &fingerprints, &tenant_ids, now_s, shares)
            })
        })?;
        PyList::new(py, outcomes.into_iter().map(Outcome::code))
    }

    /// Keys held by tenant `name` (0 for a name never seen).
    fn tenant_len(&self, name: &str) -> PyResult<usize> {
        Ok(self.with_index(|index| {
            let tenants = index.tenants();
            tenants.id_of(name.as_bytes()).map_or(0, |id| tenants.keys_of(id))
        })?)
    }

    #[getter]
    fn tenant_share_percent(&self) -> PyResult<u64> {
        Ok(self.with_index(|index| index.tenants().share_percent())?)
    }

    #[getter]
    fn tenant_keys_max(&self) -> PyResult<usize> {
        Ok(self.with_index(|index| index.tenants().keys_max())?)
    }

    fn complete_batch(
        &self,
        py: Python<'_>,
        slots: &Bound<'_, PyAny>,
        refs: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let slots = u64_items("slots", slots)?;
        let refs = u64_items("refs", refs)?;
        let len = same_lengths("slots and refs", &[slots.len(), refs.len()])?;
        detach_when(py, len >= DETACH_ITEMS_MIN, || {
            self.with_index(|index| index.complete_batch(&slots, &refs))
        })??;
        Ok(())
    }

    fn release_batch(&self, py: Python<'_>, slots: &Bound<'_, PyAny>) -> PyResult<()> {
        let slots = u64_items("slots", slots)?;
        detach_when(py, slots.len() >= DETACH_ITEMS_MIN, || {
            self.with_index(|index| index.release_batch(&slots))
        })??;
        Ok(())
    }

    fn expire(&self, py: Python<'_>, now_s: u64) -> PyResult<usize> {
        Ok(py.detach(|| self.with_index(|index| index.expire(now_s)))?)
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.with_index(|index| index.len())?)
    }

    fn in_flight(&self) -> PyResult<usize> {
        Ok(self.with_index(|index| index.in_flight())?)
    }

    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(self.with_index(|index| index.memory_bytes())?)
    }

    #[getter]
    fn capacity_max(&self) -> PyResult<usize> {
        Ok(self.with_index(|index| index.capacity_max())?)
    }

    #[getter]
    fn ttl_seconds(&self) -> PyResult<u64> {
        Ok(self.with_index(|index| index.ttl_s())?)
    }

    fn dump<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = py.detach(|| self.with_index(|index| snapshot::encode(index)))?;
        Ok(PyBytes::new(py, &data))
    }

    #[staticmethod]
    #[pyo3(signature = (data, tenant_share_percent = None, capacity_max = None, ttl_seconds = None))]
    fn load(
        py: Python<'_>,
        data: &[u8],
        tenant_share_percent: Option<u64>,
        capacity_max: Option<u64>,
        ttl_seconds: Option<u64>,
    ) -> PyResult<Self> {
        let index = py.detach(|| snapshot::decode(data, tenant_share_percent, capacity_max, ttl_seconds))?;
        Ok(Self::from_index(index))
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(self.with_index(|index| {
            format!(
                "IdempotencyIndex(len={}, in_flight={}, capacity_max={}, ttl_seconds={}, \
                 tenant_share_percent={})",
                index.len(),
                index.in_flight(),
                index.capacity_max(),
                index.ttl_s(),
                index.tenants().share_percent()
            )
        })?)
    }
}
