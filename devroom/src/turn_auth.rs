//! TURN credentials as livekit-server's embedded TURN makes them (`pkg/service/turn.go`,
//! `TURNAuthHandler`): for participant `sid` with API key `key` and secret `secret`, valid until
//! `expiry` (unix seconds; `turn.ttl_seconds`, 300 by default, after the join),
//!
//! * username = base62(`key|sid|expiry`)
//! * password = base62(sha256(`secret|sid|expiry`))
//!
//! with the base62 of `github.com/jxskiss/base62` (the alphabet `A-Za-z0-9`, 6 bits per
//! character from the least significant end, where a 6-bit group of the form `x1111x` is
//! written as 5 bits so that every group fits in 62 symbols). Clients treat both as opaque;
//! they are reproduced so that a username from devroom reads like one from livekit-server.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Groups whose bits 1-4 are all set take only 5 bits.
const COMPACT_MASK: u8 = 0x1e;

/// jxskiss/base62 encoding.
pub fn base62_encode(src: &[u8]) -> String {
    let mut out = String::with_capacity(src.len() * 9 / 5 + 1);
    // Bits not yet written, counted from the most significant end of `src`.
    let mut pos = src.len() as isize * 8;
    while pos > 0 {
        let p = pos as usize;
        let (mut i, mut r) = (p >> 3, p & 7);
        if r == 0 {
            i -= 1;
            r = 8;
        }
        // The 6 bits just above the `pos`-bit boundary, least significant first.
        let mut b = src[i] >> (8 - r);
        if r < 6 && i > 0 {
            b |= src[i - 1] << r;
        }
        b &= 0x3f;
        let mut size = 6;
        if b & COMPACT_MASK == COMPACT_MASK {
            if pos > 6 || b > 0x1f {
                size = 5;
            }
            b &= 0x1f;
        }
        out.push(ALPHABET[b as usize] as char);
        pos -= size;
    }
    out
}

/// jxskiss/base62 decoding; `None` for a character outside the alphabet.
pub fn base62_decode(s: &str) -> Option<Vec<u8>> {
    let src = s.as_bytes();
    let mut out = Vec::with_capacity(src.len() * 6 / 8 + 1);
    let (mut pos, mut acc) = (0u32, 0u32);
    for (i, &c) in src.iter().enumerate() {
        let x = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc |= x << pos;
        pos += if i == src.len() - 1 {
            // The last group holds only the bits left: its bit length.
            32 - x.leading_zeros()
        } else if x as u8 & COMPACT_MASK == COMPACT_MASK {
            5
        } else {
            6
        };
        if pos >= 8 {
            out.push(acc as u8);
            pos %= 8;
            acc >>= 8;
        }
    }
    if pos > 0 {
        out.push(acc as u8);
    }
    out.reverse();
    Some(out)
}

/// The TURN username for participant `sid`, valid until `expiry`.
pub fn username(api_key: &str, sid: &str, expiry: i64) -> String {
    base62_encode(format!("{api_key}|{sid}|{expiry}").as_bytes())
}

/// The TURN password for participant `sid`, valid until `expiry`.
pub fn password(api_secret: &str, sid: &str, expiry: i64) -> String {
    base62_encode(&Sha256::digest(format!("{api_secret}|{sid}|{expiry}").as_bytes()))
}

/// (api key, participant sid, expiry) out of a username, as `ParseUsername`.
pub fn parse_username(username: &str) -> Option<(String, String, i64)> {
    let raw = String::from_utf8(base62_decode(username)?).ok()?;
    let mut parts = raw.split('|');
    let (key, sid, expiry) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let expiry: i64 = expiry.parse().ok()?;
    (expiry != 0).then(|| (key.to_string(), sid.to_string(), expiry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_by_hand() {
        // 0x41: groups 000001, 01 → "BB".
        assert_eq!(base62_encode(&[0x41]), "BB");
        // 0xff: 111111 is compact (5 bits: 11111 = 'f'), then 111 = 'H'.
        assert_eq!(base62_encode(&[0xff]), "fH");
        assert_eq!(base62_decode("BB").unwrap(), vec![0x41]);
        assert_eq!(base62_decode("fH").unwrap(), vec![0xff]);
        assert_eq!(base62_encode(&[]), "");
        assert_eq!(base62_decode("").unwrap(), Vec::<u8>::new());
        assert_eq!(base62_decode("ab+c"), None);
    }

    #[test]
    fn base62_round_trips() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            for fill in [None, Some(0u8), Some(0xff)] {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        fill.unwrap_or(seed as u8)
                    })
                    .collect();
                let e = base62_encode(&v);
                assert!(e.bytes().all(|c| c.is_ascii_alphanumeric()));
                assert_eq!(base62_decode(&e).unwrap(), v, "len {len} fill {fill:?}");
            }
        }
    }

    #[test]
    fn credentials_as_livekit_server() {
        let u = username("devkey", "PA_abc", 1_800_000_000);
        assert_eq!(parse_username(&u), Some(("devkey".into(), "PA_abc".into(), 1_800_000_000)));
        let p = password("secret", "PA_abc", 1_800_000_000);
        assert_eq!(base62_decode(&p).unwrap(), Sha256::digest(b"secret|PA_abc|1800000000").to_vec());
        assert_ne!(p, password("secret", "PA_abd", 1_800_000_000));
        assert_ne!(p, password("other", "PA_abc", 1_800_000_000));
        assert_eq!(parse_username(&base62_encode(b"a|b")), None);
        assert_eq!(parse_username(&base62_encode(b"a|b|0")), None);
        assert_eq!(parse_username("!!"), None);
    }
}
