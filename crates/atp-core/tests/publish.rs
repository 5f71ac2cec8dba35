//! The safe-to-publish simulation (issue 13), deterministic:
//!
//! - 100 SKUs with 20 units each, 20 more received every 6 hours;
//! - Poisson demand per SKU at a rate drawn log-uniformly between 1 and 60
//!   units an hour (seed 42), for 24 simulated hours;
//! - one channel whose shoppers see the figure published 60 s earlier and
//!   buy one unit only if it is above 0; an order beyond the true
//!   availability is oversold (it will be cancelled).
//!
//! Raw publishing shows the channel ATP; safe publishing shows it less the
//! demand expected during the 60 s lag at the safety level
//! (`atp_core::publish`), with the rate learnt from the holds. Each SKU's
//! shoppers arrive at the same times under every policy, so the policies
//! are compared on the same demand.

use atp_core::publish::{
    DEFAULT_RATE_TIME_CONSTANT_MS, DEFAULT_SAFETY_LEVEL, DemandRate, PublishRule, safe_to_publish,
};

const SKUS: usize = 100;
const HOUR_MS: i64 = 3_600_000;
const HORIZON_MS: i64 = 24 * HOUR_MS;
const LAG_MS: i64 = 60_000;
const RECEIPT_EVERY_MS: i64 = 6 * HOUR_MS;
const UNITS: i64 = 20;
/// The safety levels of the curve in docs/ARCHITECTURE.md.
const LEVELS: [u32; 5] = [500, 800, 900, 950, 990];

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// Each SKU's demand rate (per hour) and its shoppers' arrival times (ms).
fn trace(seed: u64) -> Vec<(f64, Vec<i64>)> {
    let mut rng = Rng(seed);
    (0..SKUS)
        .map(|_| {
            let rate = (rng.unit() * 60f64.ln()).exp();
            let mut arrivals = Vec::new();
            let mut at = 0.0;
            loop {
                at += -rng.unit().ln() / rate * HOUR_MS as f64;
                if at >= HORIZON_MS as f64 {
                    break;
                }
                arrivals.push(at as i64);
            }
            (rate, arrivals)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Outcome {
    /// Orders placed beyond the true availability.
    oversold: u64,
    /// Units sold and held.
    fulfilled: u64,
}

/// One SKU under `rule` (`None`: raw publishing).
fn simulate(arrivals: &[i64], rule: Option<PublishRule>) -> Outcome {
    let tau = DEFAULT_RATE_TIME_CONSTANT_MS;
    let mut atp = UNITS;
    let mut rate = DemandRate::default();
    // What was published from each time on: (from, figure). Between two
    // changes of the stock the figure moves only by the rate's decay, so
    // it is published again at every arrival and receipt (the ticks).
    let mut published: Vec<(i64, i64)> = Vec::new();
    let figure = |atp: i64, rate: &DemandRate| match &rule {
        Some(rule) => safe_to_publish(atp, rate.per_hour(), rule),
        None => atp,
    };
    published.push((0, figure(atp, &rate)));
    let mut receipts = (1..).map(|n| n * RECEIPT_EVERY_MS).take_while(|at| *at < HORIZON_MS);
    let mut next_receipt = receipts.next();
    let mut outcome = Outcome::default();
    for &at in arrivals {
        while let Some(receipt) = next_receipt.filter(|receipt| *receipt <= at) {
            let exposed = published.last().is_some_and(|(_, shown)| *shown > 0);
            rate.advance(receipt, exposed, tau);
            atp += UNITS;
            published.push((receipt, figure(atp, &rate)));
            next_receipt = receipts.next();
        }
        let exposed = published.last().is_some_and(|(_, shown)| *shown > 0);
        rate.advance(at, exposed, tau);
        published.push((at, figure(atp, &rate)));
        // The shopper sees what was published LAG_MS ago.
        let seen_at = (at - LAG_MS).max(0);
        let index = published.partition_point(|(from, _)| *from <= seen_at);
        let seen = published[index.saturating_sub(1)].1;
        if seen <= 0 {
            continue;
        }
        if atp > 0 {
            atp -= 1;
            outcome.fulfilled += 1;
            rate.record(1, at, true, tau);
            published.push((at, figure(atp, &rate)));
        } else {
            outcome.oversold += 1;
        }
    }
    outcome
}

fn run(trace: &[(f64, Vec<i64>)], rule: Option<PublishRule>) -> Outcome {
    trace.iter().fold(Outcome::default(), |sum, (_, arrivals)| {
        let one = simulate(arrivals, rule);
        Outcome { oversold: sum.oversold + one.oversold, fulfilled: sum.fulfilled + one.fulfilled }
    })
}

#[test]
fn safe_to_publish_cuts_overselling_by_90_percent_and_keeps_98_percent_of_sales() {
    let trace = trace(42);
    let demand: usize = trace.iter().map(|(_, arrivals)| arrivals.len()).sum();
    let raw = run(&trace, None);
    let safe = |level| run(&trace, Some(PublishRule { lag_ms: LAG_MS, safety_level: level }));
    eprintln!("{demand} shoppers over 24 h; raw: {raw:?}");
    eprintln!("level | oversold | cut | fulfilled | of raw");
    for level in LEVELS {
        let outcome = safe(level);
        eprintln!(
            "{:.1} % | {} | {:.1} % | {} | {:.2} %",
            f64::from(level) / 10.0,
            outcome.oversold,
            100.0 * (1.0 - outcome.oversold as f64 / raw.oversold as f64),
            outcome.fulfilled,
            100.0 * outcome.fulfilled as f64 / raw.fulfilled as f64
        );
    }
    // The trace oversells under raw publishing, or there is nothing to cut.
    assert!(raw.oversold >= 50, "raw publishing oversold only {}", raw.oversold);
    let default = safe(DEFAULT_SAFETY_LEVEL);
    assert!(
        default.oversold as f64 <= 0.10 * raw.oversold as f64,
        "oversold {} against raw {}: less than a 90 % cut",
        default.oversold,
        raw.oversold
    );
    assert!(
        default.fulfilled as f64 >= 0.98 * raw.fulfilled as f64,
        "fulfilled {} against raw {}: under 98 %",
        default.fulfilled,
        raw.fulfilled
    );
}

#[test]
fn the_simulation_is_deterministic_and_the_seed_matters() {
    let rule = Some(PublishRule { lag_ms: LAG_MS, safety_level: DEFAULT_SAFETY_LEVEL });
    assert_eq!(run(&trace(42), rule), run(&trace(42), rule));
    assert_ne!(trace(42)[0].1, trace(43)[0].1);
    // Rates are log-uniform in [1, 60).
    assert!(trace(42).iter().all(|(rate, _)| (1.0..60.0).contains(rate)));
}
