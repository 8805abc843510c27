//! G.711 μ-law and A-law, the codecs Twilio Media Streams carry (`audio/x-mulaw`, 8 kHz).
//!
//! Everything is table-driven and the tables are built at compile time by `const fn`:
//! - decode: one 256-entry `i16` table per law;
//! - encode: one table per law indexed by the input's magnitude with its low bits dropped
//!   (8,193 entries for μ-law, 4,096 for A-law: both fit in L1), then the sign is applied with
//!   one XOR. The tables hold exactly what the bit-by-bit formulas below give for every `i16`;
//!   the tests check all 65,536 inputs against an independent reference.
//!
//! μ-law follows the usual 16-bit form of G.711: clip the magnitude to 32,635, add the bias
//! 0x84, take the exponent from the highest set bit and a 4-bit mantissa, complement. Negative
//! inputs use their true magnitude, so `ulaw_encode(-x) == ulaw_encode(x) ^ 0x80` for
//! `x` in `1..=32767`.
//!
//! A-law follows ITU-T G.711 on 13-bit values (the input shifted right by 3, negatives by
//! one's complement as in the ITU reference), with even bits inverted (XOR 0x55).
//!
//! Round trips: `encode(decode(code)) == code` for every code of both laws except μ-law
//! 0x7F, "negative zero", which decodes to 0 and so re-encodes as 0xFF (positive zero).

use thiserror::Error;

/// μ-law code for digital silence (positive zero). Twilio pads with it.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code for digital silence (the smallest positive step, +8).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Largest magnitude μ-law can represent before the bias would overflow its 8 segments.
const ULAW_CLIP: i32 = 32_635;
const ULAW_BIAS: i32 = 0x84;

/// Returned by the slice helpers when the output cannot hold the converted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum G711Error {
    #[error("output holds {available} samples but the input has {needed}")]
    OutputTooShort { needed: usize, available: usize },
}

const fn ulaw_decode_formula(code: u8) -> i16 {
    let complemented = !code;
    let exponent = (complemented >> 4) & 0x07;
    let mantissa = (complemented & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if complemented & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode_formula(code: u8) -> i16 {
    let toggled = code ^ 0x55;
    let segment = (toggled >> 4) & 0x07;
    // Each step's value sits in the middle of its quantisation interval, hence the +8 / +0x108.
    let mut magnitude = ((toggled & 0x0F) as i32) << 4;
    magnitude += if segment == 0 { 8 } else { 0x108 };
    if segment > 1 {
        magnitude <<= segment - 1;
    }
    // After the XOR, a set top bit means positive in A-law (the opposite of μ-law).
    if toggled & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Index of the highest set bit; `value` must be non-zero.
const fn highest_bit(value: u32) -> u32 {
    31 - value.leading_zeros()
}

/// μ-law code without sign or complement (`exponent << 4 | mantissa`) for a magnitude.
const fn ulaw_magnitude_code(magnitude: i32) -> u8 {
    let clipped = if magnitude > ULAW_CLIP {
        ULAW_CLIP
    } else {
        magnitude
    };
    let biased = (clipped + ULAW_BIAS) as u32;
    // The bias sets bit 7, so the exponent is the highest bit minus 7 and lands in 0..=7.
    let exponent = highest_bit(biased) - 7;
    let mantissa = (biased >> (exponent + 3)) & 0x0F;
    ((exponent << 4) | mantissa) as u8
}

/// A-law code without sign or XOR (`segment << 4 | mantissa`) for a 12-bit magnitude.
const fn alaw_magnitude_code(magnitude: u32) -> u8 {
    // Segment 0 and 1 share a step size, so magnitudes below 32 map like segment 1.
    let segment = if magnitude < 0x20 {
        0
    } else {
        highest_bit(magnitude) - 4
    };
    let shift = if segment < 2 { 1 } else { segment };
    ((segment << 4) | ((magnitude >> shift) & 0x0F)) as u8
}

const fn build_decode_table(ulaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = if ulaw {
            ulaw_decode_formula(code as u8)
        } else {
            alaw_decode_formula(code as u8)
        };
        code += 1;
    }
    table
}

/// μ-law encoding depends only on `|x| >> 2`: the bias 0x84 adds 4 to the low three bits, so
/// bits 0 and 1 never carry into the mantissa. 32,768 >> 2 = 8,192 is the largest index.
const ULAW_ENCODE_ENTRIES: usize = (32_768 >> 2) + 1;

const fn build_ulaw_encode_table() -> [u8; ULAW_ENCODE_ENTRIES] {
    let mut table = [0u8; ULAW_ENCODE_ENTRIES];
    let mut index = 0;
    while index < ULAW_ENCODE_ENTRIES {
        table[index] = ulaw_magnitude_code((index as i32) << 2);
        index += 1;
    }
    table
}

/// A-law works on 13-bit values, so the 12-bit magnitude `(x or !x) >> 3` indexes the table.
const ALAW_ENCODE_ENTRIES: usize = 4096;

const fn build_alaw_encode_table() -> [u8; ALAW_ENCODE_ENTRIES] {
    let mut table = [0u8; ALAW_ENCODE_ENTRIES];
    let mut index = 0;
    while index < ALAW_ENCODE_ENTRIES {
        table[index] = alaw_magnitude_code(index as u32);
        index += 1;
    }
    table
}

static ULAW_DECODE: [i16; 256] = build_decode_table(true);
static ALAW_DECODE: [i16; 256] = build_decode_table(false);
static ULAW_ENCODE: [u8; ULAW_ENCODE_ENTRIES] = build_ulaw_encode_table();
static ALAW_ENCODE: [u8; ALAW_ENCODE_ENTRIES] = build_alaw_encode_table();

/// Decode one μ-law byte to 16-bit linear PCM.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Encode one 16-bit linear PCM sample to μ-law.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    // 0x00 for non-negative, 0xFF for negative: selects the complement mask without a branch.
    let sign_bits = (sample >> 15) as u8;
    let magnitude_index = ((sample as i32).unsigned_abs() >> 2) as usize;
    // `magnitude_index` is at most 8,192, the table's last index; `min` lets the bound check go.
    let code = ULAW_ENCODE[magnitude_index.min(ULAW_ENCODE_ENTRIES - 1)];
    code ^ (0xFF ^ (sign_bits & 0x80))
}

/// Decode one A-law byte to 16-bit linear PCM.
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// Encode one 16-bit linear PCM sample to A-law.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    let sign_bits = sample >> 15;
    // One's complement for negatives (as the ITU reference does) keeps the range 0..=32767.
    let magnitude_index = ((sample ^ sign_bits) as u16 >> 3) as usize;
    let code = ALAW_ENCODE[magnitude_index & (ALAW_ENCODE_ENTRIES - 1)];
    code ^ (0xD5 ^ (sign_bits as u8 & 0x80))
}

fn check_output_len(needed: usize, available: usize) -> Result<(), G711Error> {
    if available < needed {
        return Err(G711Error::OutputTooShort { needed, available });
    }
    Ok(())
}

/// Decode `input` into the start of `output`; returns how many samples were written
/// (`input.len()`). Errors, writing nothing, if `output` is shorter than `input`.
pub fn ulaw_decode_into(input: &[u8], output: &mut [i16]) -> Result<usize, G711Error> {
    check_output_len(input.len(), output.len())?;
    for (sample, &code) in output.iter_mut().zip(input) {
        *sample = ulaw_decode(code);
    }
    Ok(input.len())
}

/// Encode `input` into the start of `output`; returns how many bytes were written
/// (`input.len()`). Errors, writing nothing, if `output` is shorter than `input`.
pub fn ulaw_encode_into(input: &[i16], output: &mut [u8]) -> Result<usize, G711Error> {
    check_output_len(input.len(), output.len())?;
    for (code, &sample) in output.iter_mut().zip(input) {
        *code = ulaw_encode(sample);
    }
    Ok(input.len())
}

/// A-law counterpart of [`ulaw_decode_into`].
pub fn alaw_decode_into(input: &[u8], output: &mut [i16]) -> Result<usize, G711Error> {
    check_output_len(input.len(), output.len())?;
    for (sample, &code) in output.iter_mut().zip(input) {
        *sample = alaw_decode(code);
    }
    Ok(input.len())
}

/// A-law counterpart of [`ulaw_encode_into`].
pub fn alaw_encode_into(input: &[i16], output: &mut [u8]) -> Result<usize, G711Error> {
    check_output_len(input.len(), output.len())?;
    for (code, &sample) in output.iter_mut().zip(input) {
        *code = alaw_encode(sample);
    }
    Ok(input.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- Reference implementations, written from the textbook description, not from the
    // --- code above: plain branches and loops, no tables, no bit tricks.

    fn reference_ulaw_decode(code: u8) -> i32 {
        let u = !code;
        let sign = u & 0x80;
        let exp = ((u >> 4) & 7) as u32;
        let mant = (u & 0x0F) as i32;
        let mag = (((mant << 3) + 0x84) << exp) - 0x84;
        if sign != 0 {
            -mag
        } else {
            mag
        }
    }

    fn reference_ulaw_encode(sample: i16) -> u8 {
        let negative = sample < 0;
        let mut mag = (sample as i32).abs();
        if mag > 32635 {
            mag = 32635;
        }
        mag += 0x84;
        let mut exp = 7;
        while exp > 0 && mag & (0x80 << exp) == 0 {
            exp -= 1;
        }
        let mant = (mag >> (exp + 3)) & 0x0F;
        let byte = ((exp << 4) | mant) as u8;
        if negative {
            !(byte | 0x80)
        } else {
            !byte
        }
    }

    // ITU-T G.711 A-law: segment end points of the 13-bit magnitude.
    const ALAW_SEGMENT_ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

    fn reference_alaw_encode(sample: i16) -> u8 {
        let mut value = (sample as i32) >> 3;
        let mask = if value >= 0 {
            0xD5
        } else {
            value = -value - 1;
            0x55
        };
        let segment = ALAW_SEGMENT_ENDS
            .iter()
            .position(|&end| value <= end)
            .expect("13-bit magnitude always fits a segment");
        let mantissa = if segment < 2 {
            (value >> 1) & 0x0F
        } else {
            (value >> segment) & 0x0F
        };
        (((segment as i32) << 4) | mantissa) as u8 ^ mask
    }

    fn reference_alaw_decode(code: u8) -> i32 {
        let a = code ^ 0x55;
        let mut t = ((a & 0x0F) as i32) << 4;
        let seg = ((a & 0x70) >> 4) as u32;
        match seg {
            0 => t += 8,
            1 => t += 0x108,
            _ => t = (t + 0x108) << (seg - 1),
        }
        if a & 0x80 != 0 {
            t
        } else {
            -t
        }
    }

    #[test]
    fn ulaw_decode_matches_formula_for_all_codes() {
        for code in 0..=255u8 {
            assert_eq!(
                ulaw_decode(code) as i32,
                reference_ulaw_decode(code),
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn alaw_decode_matches_reference_for_all_codes() {
        for code in 0..=255u8 {
            assert_eq!(
                alaw_decode(code) as i32,
                reference_alaw_decode(code),
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn ulaw_round_trips_every_code_except_negative_zero() {
        for code in 0..=255u8 {
            let back = ulaw_encode(ulaw_decode(code));
            if code == 0x7F {
                // Negative zero decodes to 0, which encodes as positive zero.
                assert_eq!(back, ULAW_SILENCE);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn alaw_round_trips_every_code() {
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(code)), code, "code {code:#04x}");
        }
    }

    #[test]
    fn ulaw_encode_matches_reference_for_all_i16() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(
                ulaw_encode(sample),
                reference_ulaw_encode(sample),
                "sample {sample}"
            );
        }
    }

    #[test]
    fn alaw_encode_matches_reference_for_all_i16() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(
                alaw_encode(sample),
                reference_alaw_encode(sample),
                "sample {sample}"
            );
        }
    }

    #[test]
    fn encode_then_decode_is_monotonic_for_both_laws() {
        let mut previous_ulaw = i16::MIN;
        let mut previous_alaw = i16::MIN;
        for sample in i16::MIN..=i16::MAX {
            let ulaw = ulaw_decode(ulaw_encode(sample));
            let alaw = alaw_decode(alaw_encode(sample));
            assert!(ulaw >= previous_ulaw, "μ-law not monotonic at {sample}");
            assert!(alaw >= previous_alaw, "A-law not monotonic at {sample}");
            previous_ulaw = ulaw;
            previous_alaw = alaw;
        }
    }

    #[test]
    fn decode_is_strictly_monotonic_in_sign_magnitude_order() {
        // μ-law: 0x00 is the most negative, 0x7F negative zero, 0xFF zero, 0x80 the largest.
        let ulaw_ascending = (0x00..=0x7Fu8).chain((0x80..=0xFFu8).rev());
        let ulaw_values: Vec<i16> = ulaw_ascending.map(ulaw_decode).collect();
        for pair in ulaw_values.windows(2) {
            // The only tie is negative zero (0x7F) next to zero (0xFF).
            if pair[0] == 0 && pair[1] == 0 {
                continue;
            }
            assert!(pair[0] < pair[1], "μ-law {pair:?}");
        }
        // A-law: after the XOR with 0x55 the top bit is the sign (set = positive) and the low
        // seven bits grow with the magnitude.
        let alaw_ascending = (0x00..=0x7Fu8).rev().chain(0x80..=0xFFu8);
        let alaw_values: Vec<i16> = alaw_ascending.map(|t| alaw_decode(t ^ 0x55)).collect();
        for pair in alaw_values.windows(2) {
            assert!(pair[0] < pair[1], "A-law {pair:?}");
        }
    }

    #[test]
    fn ulaw_is_sign_symmetric() {
        for sample in 1..=i16::MAX {
            assert_eq!(ulaw_encode(-sample), ulaw_encode(sample) ^ 0x80, "{sample}");
        }
    }

    #[test]
    fn silence_constants() {
        assert_eq!(ulaw_encode(0), ULAW_SILENCE);
        assert_eq!(ulaw_decode(ULAW_SILENCE), 0);
        assert_eq!(alaw_encode(0), ALAW_SILENCE);
        assert_eq!(alaw_decode(ALAW_SILENCE), 8);
    }

    #[test]
    fn extremes_clip_without_panicking() {
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn slice_helpers_convert_every_sample() {
        let pcm: Vec<i16> = (0..160).map(|n| (n * 409 - 32_000) as i16).collect();
        let mut ulaw = [0u8; 160];
        let mut alaw = [0u8; 160];
        assert_eq!(ulaw_encode_into(&pcm, &mut ulaw), Ok(160));
        assert_eq!(alaw_encode_into(&pcm, &mut alaw), Ok(160));
        for (n, &sample) in pcm.iter().enumerate() {
            assert_eq!(ulaw[n], ulaw_encode(sample));
            assert_eq!(alaw[n], alaw_encode(sample));
        }

        let mut decoded = [0i16; 200];
        assert_eq!(ulaw_decode_into(&ulaw, &mut decoded), Ok(160));
        assert!(ulaw
            .iter()
            .zip(&decoded)
            .all(|(&c, &s)| ulaw_decode(c) == s));
        assert_eq!(alaw_decode_into(&alaw, &mut decoded), Ok(160));
        assert!(alaw
            .iter()
            .zip(&decoded)
            .all(|(&c, &s)| alaw_decode(c) == s));
        // Past the input length the output is left alone.
        assert!(decoded[160..].iter().all(|&s| s == 0));
    }

    #[test]
    fn slice_helpers_reject_short_output_and_write_nothing() {
        let expected = Err(G711Error::OutputTooShort {
            needed: 4,
            available: 3,
        });
        let mut pcm = [7i16; 3];
        let mut codes = [7u8; 3];
        assert_eq!(ulaw_decode_into(&[0; 4], &mut pcm), expected);
        assert_eq!(alaw_decode_into(&[0; 4], &mut pcm), expected);
        assert_eq!(ulaw_encode_into(&[0; 4], &mut codes), expected);
        assert_eq!(alaw_encode_into(&[0; 4], &mut codes), expected);
        assert_eq!(pcm, [7; 3]);
        assert_eq!(codes, [7; 3]);
        // Empty input is fine.
        assert_eq!(ulaw_decode_into(&[], &mut []), Ok(0));
    }
}
