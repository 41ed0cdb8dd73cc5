//! SHA-256 and HMAC-SHA256 (RFC 2104) over the raw SHA-256 compression function.
//!
//! Working on the compression function directly lets a key keep its HMAC inner and outer states
//! after the key block (`K ^ ipad`, `K ^ opad`) has been compressed, so authenticating a short
//! message costs only the compressions of the message itself plus one for the outer hash. The
//! `sha2` crate picks the SHA-NI instructions at run time when the CPU has them.

use std::hint::black_box;

use sha2::block_api::compress256;

pub const BLOCK_LEN: usize = 64;
pub const DIGEST_LEN: usize = 32;
pub type Digest = [u8; DIGEST_LEN];

/// FIPS 180-4, 5.3.3: the initial hash value of SHA-256.
const INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
/// Padding: a 0x80 byte, zeros, then the message length in bits as a big-endian u64.
const PAD_FIRST_BYTE: u8 = 0x80;
const LENGTH_FIELD_LEN: usize = 8;
const IPAD: u8 = 0x36;
const OPAD: u8 = 0x5c;

/// Finishes a hash whose state has already absorbed `absorbed_len` bytes (a multiple of the block
/// length) by compressing `rest` and the padding.
fn finish(mut state: [u32; 8], absorbed_len: u64, rest: &[u8]) -> Digest {
    let (blocks, tail) = rest.as_chunks::<BLOCK_LEN>();
    compress256(&mut state, blocks);

    let mut last = [[0u8; BLOCK_LEN]; 2];
    let last_blocks = if tail.len() + 1 + LENGTH_FIELD_LEN <= BLOCK_LEN {
        1
    } else {
        2
    };
    let bytes = last.as_flattened_mut();
    bytes[..tail.len()].copy_from_slice(tail);
    bytes[tail.len()] = PAD_FIRST_BYTE;
    // `usize` is at most 64 bits on every target Rust supports, so the widening is lossless.
    let total_bits = (absorbed_len + rest.len() as u64) * 8;
    let end = last_blocks * BLOCK_LEN;
    bytes[end - LENGTH_FIELD_LEN..end].copy_from_slice(&total_bits.to_be_bytes());
    compress256(&mut state, &last[..last_blocks]);
    state_digest(state)
}

/// The outer hash of an HMAC: one block after the key block, holding the inner digest and a
/// padding that never changes.
fn finish_outer(mut state: [u32; 8], inner_digest: &Digest) -> Digest {
    const OUTER_BITS: u64 = ((BLOCK_LEN + DIGEST_LEN) * 8) as u64;
    let mut block = [0u8; BLOCK_LEN];
    block[..DIGEST_LEN].copy_from_slice(inner_digest);
    block[DIGEST_LEN] = PAD_FIRST_BYTE;
    block[BLOCK_LEN - LENGTH_FIELD_LEN..].copy_from_slice(&OUTER_BITS.to_be_bytes());
    compress256(&mut state, &[block]);
    state_digest(state)
}

fn state_digest(state: [u32; 8]) -> Digest {
    let mut digest = [0u8; DIGEST_LEN];
    for (out, word) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// Compares two MACs in time that does not depend on where they differ: every byte is folded in
/// and the optimizer is kept from turning the fold into an early exit.
#[must_use]
pub fn constant_time_eq(left: &Digest, right: &Digest) -> bool {
    let difference = left.iter().zip(right).fold(0u8, |acc, (l, r)| acc | (l ^ r));
    black_box(difference) == 0
}

#[must_use]
pub fn sha256(data: &[u8]) -> Digest {
    finish(INITIAL_STATE, 0, data)
}

/// Compressed bytes a SHA-256 of `len` bytes costs, padding included: the unit of work used to
/// decide whether a batch is worth releasing the GIL or spreading over threads.
#[must_use]
pub const fn sha256_work(len: usize) -> usize {
    len + BLOCK_LEN
}

/// Compressed bytes an HMAC of a `len`-byte message costs with precomputed key states.
#[must_use]
pub const fn hmac_work(len: usize) -> usize {
    len + 2 * BLOCK_LEN
}

/// An HMAC-SHA256 key reduced to its two precomputed states. These states are as secret as the
/// key itself (they let anyone compute MACs), so the type has no `Debug` and is never printed.
#[derive(Clone)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// Any key length is valid (RFC 2104): a key longer than a block is hashed first, a shorter
    /// one is padded with zeros.
    #[must_use]
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK_LEN];
        if key.len() > BLOCK_LEN {
            block[..DIGEST_LEN].copy_from_slice(&sha256(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Self {
            inner: keyed_state(&block, IPAD),
            outer: keyed_state(&block, OPAD),
        }
    }

    #[must_use]
    pub fn mac(&self, message: &[u8]) -> Digest {
        let inner_digest = finish(self.inner, BLOCK_LEN as u64, message);
        finish_outer(self.outer, &inner_digest)
    }

    /// Constant-time in the content of `expected`: the time taken says nothing about how many
    /// leading bytes of a forged MAC were right.
    #[must_use]
    pub fn verify(&self, message: &[u8], expected: &Digest) -> bool {
        constant_time_eq(&self.mac(message), expected)
    }
}

fn keyed_state(key_block: &[u8; BLOCK_LEN], pad: u8) -> [u32; 8] {
    let mut padded = *key_block;
    for byte in &mut padded {
        *byte ^= pad;
    }
    let mut state = INITIAL_STATE;
    compress256(&mut state, &[padded]);
    state
}

#[must_use]
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Digest {
    HmacKey::new(key).mac(message)
}

/// Bytes (a MAC) as lower-case hex, as they go out in a header.
#[must_use]
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for &byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Why a hex MAC could not be decoded; the values are the statuses `verify_batch_hex` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MacFormat {
    WrongLength = 3,
    NotHex = 4,
}

/// Decodes a MAC as it arrives in a header: hex, either case.
///
/// # Errors
/// `NotHex` for odd-length or non-hex input; `WrongLength` for valid hex of another length than
/// 32 bytes.
pub fn decode_hex_mac(text: &str) -> Result<Digest, MacFormat> {
    let (pairs, odd) = text.as_bytes().as_chunks::<2>();
    if !odd.is_empty() {
        return Err(MacFormat::NotHex);
    }
    let mut mac = [0u8; DIGEST_LEN];
    // Every pair is decoded before the length is judged: valid hex of the wrong length is a
    // different status than text that is not hex at all.
    let mut invalid = 0u8;
    for (index, &[high, low]) in pairs.iter().enumerate() {
        let (high, low) = (HEX_VALUES[usize::from(high)], HEX_VALUES[usize::from(low)]);
        invalid |= (high | low) & NOT_A_HEX_DIGIT;
        if let Some(slot) = mac.get_mut(index) {
            *slot = (high << 4) | (low & 0x0f);
        }
    }
    if invalid != 0 {
        Err(MacFormat::NotHex)
    } else if pairs.len() == DIGEST_LEN {
        Ok(mac)
    } else {
        Err(MacFormat::WrongLength)
    }
}

/// Marks a byte that is no hex digit in `HEX_VALUES` (digit values only use the low 4 bits).
const NOT_A_HEX_DIGIT: u8 = 0x80;
/// The value of each hex digit, either case; `NOT_A_HEX_DIGIT` for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut values = [NOT_A_HEX_DIGIT; 256];
    let mut digit: u8 = 0;
    while digit < 16 {
        values[b"0123456789abcdef"[digit as usize] as usize] = digit;
        values[b"0123456789ABCDEF"[digit as usize] as usize] = digit;
        digit += 1;
    }
    values
};

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sha256_matches_fips_180_4_examples() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
                "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(encode_hex(&sha256(message)), expected);
        }
    }

    #[test]
    fn sha256_of_a_million_a_matches_fips_180_4() {
        let message = vec![b'a'; 1_000_000];
        assert_eq!(
            encode_hex(&sha256(&message)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn sha256_padding_boundaries_agree_with_the_sha2_hasher() {
        use sha2::Digest as _;
        for len in 0..=200_u8 {
            let message: Vec<u8> = (0..len).map(|i| i.wrapping_mul(7)).collect();
            assert_eq!(
                sha256(&message).as_slice(),
                sha2::Sha256::digest(&message).as_slice(),
                "length {len}"
            );
        }
    }

    /// RFC 4231, section 4: test cases 1 to 7 (case 5 compares the 128-bit truncation).
    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        let long_key = vec![0xaa; 131];
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (vec![0x0c; 20], b"Test With Truncation".to_vec(), "a3b6167473100ee06e0c796c2955552b"),
            (
                long_key.clone(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                long_key,
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (number, (key, message, expected)) in cases.into_iter().enumerate() {
            let mac = encode_hex(&hmac_sha256(&key, &message));
            assert_eq!(
                &mac[..expected.len()],
                expected,
                "RFC 4231 test case {}",
                number + 1
            );
        }
    }

    #[test]
    fn hmac_accepts_empty_key_and_message() {
        assert_eq!(
            encode_hex(&hmac_sha256(b"", b"")),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
    }

    #[test]
    fn verify_rejects_any_flipped_bit() {
        let key = HmacKey::new(b"key");
        let mac = key.mac(b"message");
        assert!(key.verify(b"message", &mac));
        for bit in 0..DIGEST_LEN * 8 {
            let mut forged = mac;
            forged[bit / 8] ^= 1 << (bit % 8);
            assert!(!key.verify(b"message", &forged), "bit {bit}");
        }
    }

    #[test]
    fn hex_macs_decode_in_either_case_and_report_format_errors() {
        let mac = hmac_sha256(b"k", b"m");
        assert_eq!(decode_hex_mac(&encode_hex(&mac)), Ok(mac));
        assert_eq!(decode_hex_mac(&encode_hex(&mac).to_uppercase()), Ok(mac));
        assert_eq!(
            decode_hex_mac(&encode_hex(&mac[..31])),
            Err(MacFormat::WrongLength)
        );
        assert_eq!(
            decode_hex_mac(&format!("{}00", encode_hex(&mac))),
            Err(MacFormat::WrongLength)
        );
        assert_eq!(decode_hex_mac(""), Err(MacFormat::WrongLength));
        assert_eq!(decode_hex_mac(&encode_hex(&mac)[1..]), Err(MacFormat::NotHex));
        assert_eq!(
            decode_hex_mac(&format!("{}zz", &encode_hex(&mac)[2..])),
            Err(MacFormat::NotHex)
        );
        assert_eq!(decode_hex_mac("é0"), Err(MacFormat::NotHex));
    }
}
