//! Money: what a request may cost (the reservation), what it did cost (the capture), in integer nano-USD.
//! `ledger` holds balances and reservations in memory and writes entries behind; `limits` holds the
//! per-key rate and concurrency limits; `meter` reads usage from upstream answers and streams.

pub mod bill;
pub mod bpe;
pub mod ledger;
pub mod limits;
pub mod meter;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::catalog::Price;

/// Billable quantities of one request, estimated before it runs or measured after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    pub input_tokens: u64,
    /// Part of `input_tokens` the upstream served from its cache.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub images: u64,
    /// Characters of speech input.
    pub chars: u64,
    /// Milliseconds of audio transcribed or translated.
    pub audio_ms: u64,
    pub calls: u64,
}

/// How the units of a capture were known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The upstream's own usage report.
    Reported,
    /// Counted by uniapi from what was delivered (the upstream reported nothing).
    Counted,
    /// Units of the request itself (images, characters, calls).
    Request,
    /// Nothing was delivered.
    Nothing,
}

/// A priced request: units, basis and the resulting cost, kept with the request log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub units: Units,
    pub basis: Basis,
    pub cost_nano: i64,
    /// The share of `cost_nano` due to cached input tokens.
    pub cache_nano: i64,
    pub price: Price,
}

const MTOK: i128 = 1_000_000;
const MINUTE_MS: i128 = 60_000;
/// Common denominator of every price component: per million (tokens, characters) and per minute (audio).
const DENOMINATOR: i128 = MTOK * MINUTE_MS;

fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    if numerator <= 0 {
        0
    } else {
        (numerator + denominator - 1) / denominator
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The cost of `units` at `price`, rounded up to the next nano-USD once, on the exact total.
pub fn cost(price: &Price, units: &Units) -> (i64, i64) {
    if price.free {
        return (0, 0);
    }
    let p = |v: Option<i64>| i128::from(v.unwrap_or(0));
    let input = p(price.input_per_mtok);
    let cached_price = price.cached_input_per_mtok.map_or(input, i128::from);
    let cached = i128::from(units.cached_input_tokens.min(units.input_tokens));
    let uncached = i128::from(units.input_tokens) - cached;
    let per_mtok = uncached * input
        + cached * cached_price
        + i128::from(units.output_tokens) * p(price.output_per_mtok)
        + i128::from(units.chars) * p(price.per_mchar);
    let flat =
        i128::from(units.images) * p(price.per_image) + i128::from(units.calls) * p(price.per_call);
    let audio = i128::from(units.audio_ms) * p(price.per_audio_minute);
    let numerator = per_mtok * MINUTE_MS + flat * DENOMINATOR + audio * MTOK;
    let cache_part = ceil_div(cached * cached_price * MINUTE_MS, DENOMINATOR);
    (clamp(ceil_div(numerator, DENOMINATOR)), clamp(cache_part))
}

pub fn charge(price: &Price, units: Units, basis: Basis) -> Charge {
    let (cost_nano, cache_nano) = cost(price, &units);
    Charge {
        units,
        basis,
        cost_nano,
        cache_nano,
        price: price.clone(),
    }
}

/// Nano-USD as the decimal USD string of the `x-uniapi-cost-usd` header (exact, nine decimals).
pub fn usd_string(nano: i64) -> String {
    let mut buf = [0u8; USD_MAX];
    String::from_utf8_lossy(usd_digits(nano, &mut buf)).into_owned()
}

/// The same decimal as [`usd_string`], written into `buf` without `format!` (the `x-uniapi-cost-usd`
/// header of every answer: formatting cost ~1.2k instructions a request, measured with callgrind).
pub fn usd_digits(nano: i64, buf: &mut [u8; USD_MAX]) -> &[u8] {
    let mut n = nano.unsigned_abs();
    let mut at = USD_MAX;
    let mut push = |byte: u8| {
        at -= 1;
        buf[at] = byte;
    };
    // nine decimals, the point, then the whole dollars (at least one digit)
    for _ in 0..9 {
        push(b'0' + (n % 10) as u8);
        n /= 10;
    }
    push(b'.');
    loop {
        push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nano < 0 {
        push(b'-');
    }
    &buf[at..]
}

/// Room for the longest [`usd_digits`]: `i64::MIN` is a sign, 19 digits and the point (21 bytes).
pub const USD_MAX: usize = 22;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token_price() -> Price {
        Price {
            input_per_mtok: Some(150_000_000),
            output_per_mtok: Some(600_000_000),
            cached_input_per_mtok: Some(75_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_cost_exactly() {
        // 1,000 input (200 cached) and 500 output at 0.15 / 0.075 / 0.60 USD per Mtok
        let units = Units {
            input_tokens: 1000,
            cached_input_tokens: 200,
            output_tokens: 500,
            ..Default::default()
        };
        let (cost_nano, cache) = cost(&token_price(), &units);
        assert_eq!(cost_nano, 800 * 150 + 200 * 75 + 500 * 600);
        assert_eq!(cache, 200 * 75);
    }

    #[test]
    fn a_fraction_of_a_nano_rounds_up_once() {
        let units = Units {
            input_tokens: 1,
            ..Default::default()
        };
        let price = Price {
            input_per_mtok: Some(1),
            ..Default::default()
        };
        assert_eq!(cost(&price, &units).0, 1);
        assert_eq!(cost(&price, &Units::default()).0, 0);
    }

    #[test]
    fn flat_audio_and_character_prices() {
        let price = Price {
            per_call: Some(100_000_000),
            per_image: Some(20_000_000),
            per_mchar: Some(15_000_000_000),
            per_audio_minute: Some(6_000_000),
            ..Default::default()
        };
        let units = Units {
            calls: 1,
            images: 3,
            chars: 1000,
            audio_ms: 90_000,
            ..Default::default()
        };
        assert_eq!(
            cost(&price, &units).0,
            100_000_000 + 60_000_000 + 15_000_000 + 9_000_000
        );
        assert_eq!(
            cost(
                &Price {
                    free: true,
                    ..price
                },
                &units
            )
            .0,
            0
        );
    }

    #[test]
    fn usd_string_is_exact() {
        assert_eq!(usd_string(1), "0.000000001");
        assert_eq!(usd_string(1_234_567_891), "1.234567891");
        assert_eq!(usd_string(0), "0.000000000");
        assert_eq!(usd_string(-5), "-0.000000005");
        assert_eq!(usd_string(-1_000_000_000), "-1.000000000");
        assert_eq!(usd_string(i64::MAX), "9223372036.854775807");
        assert_eq!(usd_string(i64::MIN), "-9223372036.854775808");
    }

    proptest! {
        /// The hand-written digits say what `format!` would.
        #[test]
        fn usd_digits_match_format(nano in any::<i64>()) {
            let sign = if nano < 0 { "-" } else { "" };
            let n = nano.unsigned_abs();
            prop_assert_eq!(usd_string(nano), format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000));
        }

        /// No drift: a cost is within one nano of the exact rational value, and splitting the output of one request
        /// into two captures never charges less than the sum rounded once (each capture rounds up at most once).
        #[test]
        fn cost_is_the_exact_value_rounded_up(input in 0u64..10_000_000, cached in 0u64..10_000_000, output in 0u64..10_000_000,
                                              pin in 0i64..100_000_000_000, pout in 0i64..100_000_000_000) {
            let price = Price { input_per_mtok: Some(pin), output_per_mtok: Some(pout), ..Default::default() };
            let units = Units { input_tokens: input, cached_input_tokens: cached, output_tokens: output, ..Default::default() };
            let exact = i128::from(input) * i128::from(pin) + i128::from(output) * i128::from(pout);
            let (c, _) = cost(&price, &units);
            let c = i128::from(c);
            prop_assert!(c * 1_000_000 >= exact);
            prop_assert!((c - 1) * 1_000_000 < exact || c == 0);
        }
    }
}
