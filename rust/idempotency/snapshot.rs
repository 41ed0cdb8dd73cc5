//! The snapshot format of the index: the finished entries, oldest first, with what is needed to
//! find them again (the hash seed) and a CRC-32C trailer. In-flight reservations are not kept: a
//! snapshot holds committed state, and after a restart a retry of an unfinished request must be
//! processed (NEW), not wait for a reservation nobody will complete.
//!
//! Layout, all integers little-endian:
//!
//! | offset          | size | field                                            |
//! |-----------------|------|--------------------------------------------------|
//! | 0               | 8    | magic `IPIDEMP\0`                                |
//! | 8               | 4    | format version (1)                               |
//! | 12              | 4    | flags, 0                                         |
//! | 16              | 8    | `capacity_max`                                   |
//! | 24              | 8    | `ttl_seconds`                                    |
//! | 32              | 16   | `SipHash` key of the key hashes                  |
//! | 48              | 8    | entry count n                                    |
//! | 56              | 48 n | entries: key hash (2 x u64), fingerprint prefix  |
//! |                 |      | (16 B), reference (u64), `created_s` (u64)       |
//! | 56 + 48 n       | 4    | CRC-32C of every byte before it                  |
//!
//! CRC-32C detects every error burst of up to 32 bits, so any single corrupted byte is caught.

use super::index::Index;
use super::ring::{Finished, FINISHED_LEN};
use super::{Fingerprint, Seed};
use crate::error::{CoreError, CoreResult};

const MAGIC: &[u8; 8] = b"IPIDEMP\0";
const VERSION: u32 = 1;
const VERSION_AT: usize = 8;
const FLAGS_AT: usize = 12;
const CAPACITY_AT: usize = 16;
const TTL_AT: usize = 24;
const SEED_AT: usize = 32;
const COUNT_AT: usize = 48;
const HEADER_LEN: usize = 56;
const CRC_LEN: usize = 4;

/// Within an entry.
const KEY_AT: usize = 0;
const FINGERPRINT_AT: usize = 16;
const REFERENCE_AT: usize = 32;
const CREATED_AT: usize = 40;
const _: () = assert!(CREATED_AT + 8 == FINISHED_LEN);

pub fn encode(index: &Index) -> Vec<u8> {
    let count = index.finished().count();
    let mut out = Vec::with_capacity(HEADER_LEN + count * FINISHED_LEN + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(index.capacity_max() as u64).to_le_bytes());
    out.extend_from_slice(&index.ttl_s().to_le_bytes());
    out.extend_from_slice(index.seed());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for entry in index.finished() {
        out.extend_from_slice(&entry.key[0].to_le_bytes());
        out.extend_from_slice(&entry.key[1].to_le_bytes());
        out.extend_from_slice(&entry.fingerprint);
        out.extend_from_slice(&entry.reference.to_le_bytes());
        out.extend_from_slice(&entry.created_s.to_le_bytes());
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

/// Checks everything that can be checked before trusting a single field.
fn checked_body(data: &[u8]) -> CoreResult<&[u8]> {
    if data.len() < HEADER_LEN + CRC_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            data.len()
        )));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt("wrong magic bytes"));
    }
    let version = u32_at(data, VERSION_AT);
    if version != VERSION {
        return Err(corrupt(format!("unsupported format version {version}")));
    }
    let (body, trailer) = data.split_at(data.len() - CRC_LEN);
    if crc32c::crc32c(body) != u32::from_le_bytes(array(trailer, 0)) {
        return Err(corrupt("checksum mismatch (truncated or corrupted)"));
    }
    if u32_at(body, FLAGS_AT) != 0 {
        return Err(corrupt("unknown flags"));
    }
    Ok(body)
}

fn entry_at(body: &[u8], at: usize) -> Finished {
    Finished {
        key: [u64_at(body, at + KEY_AT), u64_at(body, at + KEY_AT + 8)],
        fingerprint: array::<{ size_of::<Fingerprint>() }>(body, at + FINGERPRINT_AT),
        reference: u64_at(body, at + REFERENCE_AT),
        created_s: u64_at(body, at + CREATED_AT),
    }
}

/// # Errors
/// `CorruptDump` for anything but an intact dump; `OutOfRange` for impossible settings.
pub fn decode(data: &[u8]) -> CoreResult<Index> {
    let body = checked_body(data)?;
    let seed: Seed = array(body, SEED_AT);
    let mut index = Index::new(u64_at(body, CAPACITY_AT), u64_at(body, TTL_AT), seed)?;
    let count = u64_at(body, COUNT_AT);
    let entries_len = body.len() - HEADER_LEN;
    if count.checked_mul(FINISHED_LEN as u64) != Some(entries_len as u64) {
        return Err(corrupt(format!(
            "{count} entries do not fill {entries_len} bytes"
        )));
    }
    for at in (HEADER_LEN..body.len()).step_by(FINISHED_LEN) {
        index.restore(entry_at(body, at))?;
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::index::Outcome;

    fn sample() -> Index {
        let mut index = Index::new(100, 60, [3; 16]).expect("valid settings");
        let mut slots = Vec::new();
        for (n, key) in (0u8..).zip([&b"a"[..], b"bb", b"ccc"]) {
            if let Outcome::New(slot) =
                index.reserve(index.key_hasher().hash(key), &[n; 16], 10 * u64::from(n))
            {
                slots.push(slot);
            }
        }
        index.complete_batch(&slots[..2], &[11, 22]).expect("in flight");
        index
    }

    #[test]
    fn a_dump_loads_back_to_the_same_finished_entries_without_reservations() {
        let index = sample();
        let loaded = decode(&encode(&index)).expect("intact dump");
        assert_eq!(
            loaded.finished().collect::<Vec<_>>(),
            index.finished().collect::<Vec<_>>()
        );
        assert_eq!((loaded.len(), loaded.in_flight()), (2, 0));
        assert_eq!(loaded.seed(), index.seed());
        assert_eq!((loaded.capacity_max(), loaded.ttl_s()), (100, 60));
        assert_eq!(encode(&loaded), encode(&index));
    }

    #[test]
    fn every_single_byte_corruption_and_truncation_is_refused() {
        let dump = encode(&sample());
        for at in 0..dump.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut corrupted = dump.clone();
                corrupted[at] ^= flip;
                assert!(
                    decode(&corrupted).is_err(),
                    "flip {flip:#x} at byte {at} was accepted"
                );
            }
            assert!(
                decode(&dump[..at]).is_err(),
                "truncation to {at} bytes was accepted"
            );
        }
    }

    #[test]
    fn a_dump_with_a_key_twice_is_refused_even_with_a_valid_checksum() {
        let dump = encode(&sample());
        let mut doubled = dump[..dump.len() - CRC_LEN].to_vec();
        doubled[COUNT_AT..COUNT_AT + 8].copy_from_slice(&3u64.to_le_bytes());
        doubled.extend_from_slice(&dump[HEADER_LEN..HEADER_LEN + FINISHED_LEN]);
        let crc = crc32c::crc32c(&doubled);
        doubled.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&doubled).err(),
            Some(CoreError::CorruptDump("a key appears twice".into()))
        );
    }
}
