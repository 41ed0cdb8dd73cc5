//! The snapshot format of the index: the finished entries, oldest first, with what is needed to
//! find them again (the hash seed) and a CRC-32C trailer. In-flight reservations are not kept: a
//! snapshot holds committed state, and after a restart a retry of an unfinished request must be
//! processed (NEW), not wait for a reservation nobody will complete.
//!
//! Layout of version 2, all integers little-endian:
//!
//! | offset          | size | field                                            |
//! |-----------------|------|--------------------------------------------------|
//! | 0               | 8    | magic `IPIDEMP\0`                                |
//! | 8               | 4    | format version (2)                               |
//! | 12              | 4    | flags, 0                                         |
//! | 16              | 8    | `capacity_max`                                   |
//! | 24              | 8    | `ttl_seconds`                                    |
//! | 32              | 16   | `SipHash` key of the key hashes                  |
//! | 48              | 8    | entry count n                                    |
//! | 56              | 4    | tenant share, percent of `capacity_max`          |
//! | 60              | 4    | tenant count m                                   |
//! | 64              | t    | m tenant names, tenant 1 first: length (u8) and  |
//! |                 |      | bytes                                            |
//! | 64 + t          | 48 n | entries: key hash (2 x u64), fingerprint prefix  |
//! |                 |      | (16 B), reference (u64), `created_s` (u32),      |
//! |                 |      | tenant (u32, 0 for none)                         |
//! | 64 + t + 48 n   | 4    | CRC-32C of every byte before it                  |
//!
//! Version 1 (before tenants) has no share, tenant count or names (its entries start at 56) and
//! a u64 `created_s` in place of `created_s` and tenant: its entries load as keys of no tenant,
//! with the default share.
//!
//! CRC-32C detects every error burst of up to 32 bits, so any single corrupted byte is caught.

use super::index::Index;
use super::ring::{Finished, FINISHED_LEN};
use super::tenants::{TenantId, NO_TENANT, TENANT_SHARE_PERCENT_DEFAULT};
use super::{Fingerprint, Seed};
use crate::error::{CoreError, CoreResult};

const MAGIC: &[u8; 8] = b"IPIDEMP\0";
const VERSION: u32 = 2;
const VERSION_WITHOUT_TENANTS: u32 = 1;
const VERSION_AT: usize = 8;
const FLAGS_AT: usize = 12;
const CAPACITY_AT: usize = 16;
const TTL_AT: usize = 24;
const SEED_AT: usize = 32;
const COUNT_AT: usize = 48;
const HEADER_V1_LEN: usize = 56;
const SHARE_AT: usize = 56;
const TENANT_COUNT_AT: usize = 60;
const HEADER_LEN: usize = 64;
const CRC_LEN: usize = 4;

/// Within an entry.
const KEY_AT: usize = 0;
const FINGERPRINT_AT: usize = 16;
const REFERENCE_AT: usize = 32;
const CREATED_AT: usize = 40;
const TENANT_AT: usize = 44;
const _: () = assert!(TENANT_AT + 4 == FINISHED_LEN);

pub fn encode(index: &Index) -> Vec<u8> {
    let count = index.finished().count();
    let tenants = index.tenants();
    let mut out = Vec::with_capacity(HEADER_LEN + count * FINISHED_LEN + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(index.capacity_max() as u64).to_le_bytes());
    out.extend_from_slice(&index.ttl_s().to_le_bytes());
    out.extend_from_slice(index.seed());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    let share = u32::try_from(tenants.share_percent()).expect("at most 100");
    out.extend_from_slice(&share.to_le_bytes());
    let names = tenants.names();
    out.extend_from_slice(&u32::try_from(names.len()).expect("u32 ids").to_le_bytes());
    for name in names {
        out.push(u8::try_from(name.len()).expect("names are at most 255 bytes"));
        out.extend_from_slice(name);
    }
    for entry in index.finished() {
        out.extend_from_slice(&entry.key[0].to_le_bytes());
        out.extend_from_slice(&entry.key[1].to_le_bytes());
        out.extend_from_slice(&entry.fingerprint);
        out.extend_from_slice(&entry.reference.to_le_bytes());
        out.extend_from_slice(&entry.created_s.to_le_bytes());
        out.extend_from_slice(&entry.tenant.to_le_bytes());
    }
    out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
    out
}

fn corrupt(reason: impl Into<String>) -> CoreError {
    CoreError::CorruptDump(reason.into())
}

fn array<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    data[at..at + N]
        .try_into()
        .expect("the length was checked before reading")
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(data, at))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(data, at))
}

/// Checks everything that can be checked before trusting a single field; returns the version
/// and the bytes the checksum covers.
fn checked_body(data: &[u8]) -> CoreResult<(u32, &[u8])> {
    if data.len() < HEADER_V1_LEN + CRC_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            data.len()
        )));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt("wrong magic bytes"));
    }
    let version = u32_at(data, VERSION_AT);
    if version != VERSION && version != VERSION_WITHOUT_TENANTS {
        return Err(corrupt(format!("unsupported format version {version}")));
    }
    let (body, trailer) = data.split_at(data.len() - CRC_LEN);
    if crc32c::crc32c(body) != u32::from_le_bytes(array(trailer, 0)) {
        return Err(corrupt("checksum mismatch (truncated or corrupted)"));
    }
    if u32_at(body, FLAGS_AT) != 0 {
        return Err(corrupt("unknown flags"));
    }
    if version == VERSION && body.len() < HEADER_LEN {
        return Err(corrupt("the tenant header is missing"));
    }
    Ok((version, body))
}

fn entry_at(body: &[u8], at: usize, version: u32) -> CoreResult<Finished> {
    let (created_s, tenant) = if version == VERSION_WITHOUT_TENANTS {
        let created_s = u64_at(body, at + CREATED_AT);
        let created_s =
            u32::try_from(created_s).map_err(|_| corrupt(format!("created_s {created_s} is past 2106")))?;
        (created_s, NO_TENANT)
    } else {
        (u32_at(body, at + CREATED_AT), u32_at(body, at + TENANT_AT))
    };
    Ok(Finished {
        key: [u64_at(body, at + KEY_AT), u64_at(body, at + KEY_AT + 8)],
        fingerprint: array::<{ size_of::<Fingerprint>() }>(body, at + FINGERPRINT_AT),
        reference: u64_at(body, at + REFERENCE_AT),
        created_s,
        tenant,
    })
}

/// Numbers the dump's tenants, in their order, in `index`; returns where the entries start.
fn restore_tenants(body: &[u8], index: &mut Index) -> CoreResult<usize> {
    let count = u32_at(body, TENANT_COUNT_AT);
    let mut at = HEADER_LEN;
    for expected in 1..=count {
        let len = usize::from(*body.get(at).ok_or_else(|| corrupt("tenant names cut short"))?);
        let name = body
            .get(at + 1..at + 1 + len)
            .ok_or_else(|| corrupt("tenant names cut short"))?;
        if index.tenants().id_of(name).is_some() {
            return Err(corrupt("a tenant appears twice"));
        }
        let id: TenantId = index
            .tenants_mut()
            .intern(0, name)
            .map_err(|_| corrupt("an empty tenant name"))?;
        assert_eq!(id, expected, "a new index numbers tenants from 1");
        at += 1 + len;
    }
    Ok(at)
}

/// The index a dump holds; `share_percent`, `capacity_max` and `ttl_s` replace the dumped
/// settings when given (the ones configured now; None keeps the dump's).
///
/// # Errors
/// `CorruptDump` for anything but an intact dump; `OutOfRange` for impossible settings;
/// `IndexTooSmall` for more keys than the capacity.
pub fn decode(
    data: &[u8],
    share_percent: Option<u64>,
    capacity_max: Option<u64>,
    ttl_s: Option<u64>,
) -> CoreResult<Index> {
    let (version, body) = checked_body(data)?;
    let seed: Seed = array(body, SEED_AT);
    let dumped_share = if version == VERSION {
        u64::from(u32_at(body, SHARE_AT))
    } else {
        TENANT_SHARE_PERCENT_DEFAULT
    };
    let share = share_percent.unwrap_or(dumped_share);
    let count = u64_at(body, COUNT_AT);
    let capacity = capacity_max.unwrap_or_else(|| u64_at(body, CAPACITY_AT));
    if count > capacity {
        return Err(CoreError::IndexTooSmall {
            what: "the snapshot",
            held: count,
            capacity,
        });
    }
    let ttl_s = ttl_s.unwrap_or_else(|| u64_at(body, TTL_AT));
    let mut index = Index::new(capacity, ttl_s, share, seed)?;
    let entries_at = if version == VERSION {
        restore_tenants(body, &mut index)?
    } else {
        HEADER_V1_LEN
    };
    let entries_len = body.len() - entries_at;
    if count.checked_mul(FINISHED_LEN as u64) != Some(entries_len as u64) {
        return Err(corrupt(format!(
            "{count} entries do not fill {entries_len} bytes"
        )));
    }
    for at in (entries_at..body.len()).step_by(FINISHED_LEN) {
        index.restore(entry_at(body, at, version)?)?;
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::index::{Outcome, Shares};

    fn sample() -> Index {
        let mut index = Index::new(100, 60, 30, [3; 16]).expect("valid settings");
        let shop = index.tenants_mut().intern(0, b"shop").expect("valid name");
        let mut slots = Vec::new();
        for (n, key) in (0u8..).zip([&b"a"[..], b"bb", b"ccc"]) {
            let (key, tenant) = (
                index.key_hasher().hash(key),
                [NO_TENANT, shop][usize::from(n % 2)],
            );
            if let Outcome::New(slot) =
                index.reserve(key, &[n; 16], tenant, 10 * u32::from(n), Shares::Enforced)
            {
                slots.push(slot);
            }
        }
        index.complete_batch(&slots[..2], &[11, 22]).expect("in flight");
        index
    }

    #[test]
    fn a_dump_loads_into_the_capacity_and_ttl_configured_now_if_its_keys_fit() {
        let dump = encode(&sample());
        let resized = decode(&dump, None, Some(2), Some(5)).expect("two keys fit in two");
        assert_eq!(
            (resized.capacity_max(), resized.len(), resized.ttl_s()),
            (2, 2, 5)
        );
        assert_eq!(
            decode(&dump, None, Some(1), None).err(),
            Some(CoreError::IndexTooSmall {
                what: "the snapshot",
                held: 2,
                capacity: 1
            })
        );
    }

    #[test]
    fn a_dump_loads_back_to_the_same_finished_entries_without_reservations() {
        let index = sample();
        let loaded = decode(&encode(&index), None, None, None).expect("intact dump");
        assert_eq!(
            loaded.finished().collect::<Vec<_>>(),
            index.finished().collect::<Vec<_>>()
        );
        assert_eq!((loaded.len(), loaded.in_flight()), (2, 0));
        assert_eq!(loaded.seed(), index.seed());
        assert_eq!((loaded.capacity_max(), loaded.ttl_s()), (100, 60));
        assert_eq!(loaded.tenants().share_percent(), 30);
        assert_eq!(loaded.tenants().id_of(b"shop"), Some(1));
        assert_eq!(
            loaded.tenants().keys_of(1),
            1,
            "its finished key, not its reservation"
        );
        assert_eq!(encode(&loaded), encode(&index));
        let reshared = decode(&encode(&index), Some(50), None, None).expect("intact dump");
        assert_eq!(reshared.tenants().share_percent(), 50);
    }

    #[test]
    fn every_single_byte_corruption_and_truncation_is_refused() {
        let dump = encode(&sample());
        for at in 0..dump.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut corrupted = dump.clone();
                corrupted[at] ^= flip;
                assert!(
                    decode(&corrupted, None, None, None).is_err(),
                    "flip {flip:#x} at byte {at} was accepted"
                );
            }
            assert!(
                decode(&dump[..at], None, None, None).is_err(),
                "truncation to {at} bytes was accepted"
            );
        }
    }

    #[test]
    fn a_dump_with_a_key_twice_is_refused_even_with_a_valid_checksum() {
        let dump = encode(&sample());
        let mut doubled = dump[..dump.len() - CRC_LEN].to_vec();
        doubled[COUNT_AT..COUNT_AT + 8].copy_from_slice(&3u64.to_le_bytes());
        let entries_at = dump.len() - CRC_LEN - 2 * FINISHED_LEN;
        doubled.extend_from_slice(&dump[entries_at..entries_at + FINISHED_LEN]);
        let crc = crc32c::crc32c(&doubled);
        doubled.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&doubled, None, None, None).err(),
            Some(CoreError::CorruptDump("a key appears twice".into()))
        );
    }
}
