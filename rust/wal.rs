//! Write-ahead log record framing: encoding a batch of records into one buffer (one write, one
//! fdatasync) and scanning a segment back, in Rust because recovery must replay millions of
//! records per second. Segment files, rotation and snapshots are Python (`instapay.wal`).
//!
//! Record layout, little-endian, framed like Kafka and `TensorBoard` records:
//!
//! | offset | size | field                                                      |
//! |--------|------|------------------------------------------------------------|
//! | 0      | 4    | payload length n (at most `RECORD_LEN_MAX`)                |
//! | 4      | 4    | CRC-32C of bytes 8 .. 20 + n (type, flags, LSN, payload)   |
//! | 8      | 2    | record type, not 0                                         |
//! | 10     | 2    | flags, 0                                                   |
//! | 12     | 8    | LSN: log sequence number, +1 from one record to the next   |
//! | 20     | n    | payload                                                    |

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::convert::{int_items, read_bytes_items, same_lengths};
use crate::error::{CoreError, CoreResult};

pub const HEADER_LEN: usize = 20;
pub const RECORD_LEN_MAX: usize = 1 << 20;
const LEN_AT: usize = 0;
const CRC_AT: usize = 4;
const TYPE_AT: usize = 8;
const FLAGS_AT: usize = 10;
const LSN_AT: usize = 12;

/// Why a scan stopped.
pub const SCAN_END: u8 = 0;
/// The data ends inside a record: a torn write at the tail.
pub const SCAN_TORN: u8 = 1;
pub const SCAN_BAD_CRC: u8 = 2;
/// A length over the maximum, a zero type or non-zero flags.
pub const SCAN_BAD_HEADER: u8 = 3;
/// A valid record whose LSN is not the one expected next.
pub const SCAN_BAD_LSN: u8 = 4;

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(data[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("eight bytes"))
}

/// Appends one framed record to `out`.
pub fn encode_into(out: &mut Vec<u8>, lsn: u64, record_type: u16, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .expect("checked length")
            .to_le_bytes(),
    );
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record_type.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = ::crc32c::crc32c(&out[start + TYPE_AT..]);
    out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One record found by a scan: where its payload lies in the scanned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub lsn: u64,
    pub record_type: u16,
    pub payload_at: usize,
    pub payload_len: usize,
}

/// Reads the frame at `at`: `Ok` with the frame, or `Err` with the `SCAN_*` reason.
pub fn frame_at(data: &[u8], at: usize) -> Result<Frame, u8> {
    let rest = &data[at..];
    if rest.len() < HEADER_LEN {
        return Err(SCAN_TORN);
    }
    let payload_len = u32_at(rest, LEN_AT) as usize;
    if payload_len > RECORD_LEN_MAX || u16_at(rest, TYPE_AT) == 0 || u16_at(rest, FLAGS_AT) != 0 {
        return Err(SCAN_BAD_HEADER);
    }
    if rest.len() < HEADER_LEN + payload_len {
        return Err(SCAN_TORN);
    }
    if ::crc32c::crc32c(&rest[TYPE_AT..HEADER_LEN + payload_len]) != u32_at(rest, CRC_AT) {
        return Err(SCAN_BAD_CRC);
    }
    Ok(Frame {
        lsn: u64_at(rest, LSN_AT),
        record_type: u16_at(rest, TYPE_AT),
        payload_at: at + HEADER_LEN,
        payload_len,
    })
}

/// Scans from `at` while records are valid and numbered `lsn_next`, `lsn_next + 1`, ...
/// Returns the frames, the offset where the scan stopped and why.
pub fn scan(data: &[u8], mut at: usize, mut lsn_next: u64) -> (Vec<Frame>, usize, u8) {
    let mut frames = Vec::new();
    while at < data.len() {
        match frame_at(data, at) {
            Ok(frame) if frame.lsn == lsn_next => {
                at = frame.payload_at + frame.payload_len;
                lsn_next += 1;
                frames.push(frame);
            }
            Ok(_) => return (frames, at, SCAN_BAD_LSN),
            Err(reason) => return (frames, at, reason),
        }
    }
    (frames, at, SCAN_END)
}

/// The first offset after `at` where a whole valid record with an LSN of at least `lsn_min`
/// starts: proof that damage at `at` is not a torn tail.
pub fn next_valid(data: &[u8], at: usize, lsn_min: u64) -> Option<usize> {
    (at + 1..data.len()).find(|&start| frame_at(data, start).is_ok_and(|frame| frame.lsn >= lsn_min))
}

pub(crate) fn check_payload(index: usize, payload: &[u8]) -> CoreResult<()> {
    if payload.len() > RECORD_LEN_MAX {
        return Err(CoreError::RecordTooLarge {
            index,
            len: payload.len(),
            max: RECORD_LEN_MAX,
        });
    }
    Ok(())
}

/// Frames `payloads` as records numbered from `lsn_first`, ready for one write.
#[pyfunction]
pub fn wal_encode<'py>(
    py: Python<'py>,
    lsn_first: u64,
    types: &Bound<'py, PyAny>,
    payloads: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let types = int_items("types", "1 to 65535", types, |&record_type: &u16| {
        record_type != 0
    })?;
    same_lengths("types and payloads", &[types.len(), payloads.len()?])?;
    let mut out = Vec::new();
    read_bytes_items("payloads", payloads, |index, payload| {
        check_payload(index, payload)?;
        let record_type = *types.get(index).ok_or(CoreError::LengthMismatch {
            names: "types and payloads",
            lengths: vec![types.len(), index + 1],
        })?;
        encode_into(&mut out, lsn_first + index as u64, record_type, payload);
        Ok(())
    })?;
    Ok(PyBytes::new(py, &out))
}

/// Scans `data` from `offset`; see `scan`. Returns `(records, end_offset, reason)` with records
/// as `(lsn, type, payload)`.
#[pyfunction]
pub fn wal_scan<'py>(
    py: Python<'py>,
    data: &[u8],
    offset: usize,
    lsn_next: u64,
) -> PyResult<(Bound<'py, PyList>, usize, u8)> {
    let start = offset.min(data.len());
    let (frames, end, reason) = py.detach(|| scan(data, start, lsn_next));
    let records = PyList::new(
        py,
        frames.iter().map(|frame| {
            let payload = &data[frame.payload_at..frame.payload_at + frame.payload_len];
            (frame.lsn, frame.record_type, PyBytes::new(py, payload))
        }),
    )?;
    Ok((records, end, reason))
}

/// Scans `data` from `offset` as `wal_scan` does, without a Python object per record (recovery
/// replays them from `data`): `(record count, end_offset, reason)`.
#[pyfunction]
pub fn wal_scan_extent(py: Python<'_>, data: &[u8], offset: usize, lsn_next: u64) -> (usize, usize, u8) {
    let start = offset.min(data.len());
    let (frames, end, reason) = py.detach(|| scan(data, start, lsn_next));
    (frames.len(), end, reason)
}

/// The first offset after `offset` where a valid record with LSN >= `lsn_min` starts, if any.
#[pyfunction]
pub fn wal_next_valid(py: Python<'_>, data: &[u8], offset: usize, lsn_min: u64) -> Option<usize> {
    py.detach(|| next_valid(data, offset, lsn_min))
}

#[pyfunction]
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lsn_first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (lsn, payload) in (lsn_first..).zip(payloads) {
            encode_into(&mut out, lsn, 7, payload);
        }
        out
    }

    #[test]
    fn records_scan_back_in_order() {
        let data = batch(5, &[b"a", b"", b"ccc"]);
        let (frames, end, reason) = scan(&data, 0, 5);
        assert_eq!((end, reason), (data.len(), SCAN_END));
        let payloads: Vec<&[u8]> = frames
            .iter()
            .map(|f| &data[f.payload_at..f.payload_at + f.payload_len])
            .collect();
        assert_eq!(payloads, [&b"a"[..], b"", b"ccc"]);
        assert_eq!(frames.iter().map(|f| f.lsn).collect::<Vec<_>>(), [5, 6, 7]);
    }

    #[test]
    fn every_truncation_of_the_last_record_is_torn() {
        let data = batch(1, &[b"first", b"second record"]);
        let last = HEADER_LEN + 5;
        for cut in last + 1..data.len() {
            let (frames, end, reason) = scan(&data[..cut], 0, 1);
            assert_eq!((frames.len(), end, reason), (1, last, SCAN_TORN), "cut at {cut}");
            assert_eq!(next_valid(&data[..cut], end, 2), None);
        }
    }

    #[test]
    fn every_bit_flip_in_a_record_stops_the_scan_there() {
        let data = batch(1, &[b"first", b"second record", b"third"]);
        let second = HEADER_LEN + 5;
        let third = second + HEADER_LEN + 13;
        for at in second..third {
            for bit in 0..8 {
                let mut damaged = data.clone();
                damaged[at] ^= 1 << bit;
                let (frames, end, reason) = scan(&damaged, 0, 1);
                assert_eq!((frames.len(), end), (1, second), "flip at {at}");
                assert_ne!(reason, SCAN_END);
                assert_eq!(next_valid(&damaged, end, 2), Some(third), "flip at {at}");
            }
        }
    }

    #[test]
    fn a_gap_in_lsns_stops_the_scan() {
        let mut data = batch(1, &[b"a"]);
        data.extend(batch(3, &[b"b"]));
        let (frames, _, reason) = scan(&data, 0, 1);
        assert_eq!((frames.len(), reason), (1, SCAN_BAD_LSN));
    }
}
