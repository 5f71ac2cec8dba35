//! Safe-to-publish (issue 13): the figure a channel should show, given how
//! long the channel takes to apply an update.
//!
//! A channel that shows a figure `lag` late keeps selling for `lag` after
//! the stock ran out. So the published figure holds back the demand
//! expected during the lag:
//!
//! ```text
//! published = clamp(channel_atp − q, 0, channel_atp)
//! q         = the smallest k with P(Poisson(rate × lag) ≤ k) ≥ level
//! ```
//!
//! `rate` is the observed demand (units held per hour) of the SKU on the
//! channel, an exponentially weighted rate: each hold of `u` units adds
//! `u / τ` and the rate decays by `e^(−Δt/τ)` between events (and on
//! ticks, so the figure moves even without holds). In steady Poisson
//! demand of λ per hour its mean is λ. `level` is the channel's safety
//! level, a probability in per mille: the chance that the units sold
//! during the lag do not exceed what was held back. Level 0 publishes the
//! channel ATP as it is.
//!
//! Everything is integer in and out and deterministic: the same events at
//! the same times give the same figures on every node.

/// Most safety level (per mille): 999 holds back the 99.9 % quantile.
pub const MAX_SAFETY_LEVEL: u32 = 999;
/// The default safety level (per mille), chosen by the simulation in
/// `tests/publish.rs` (see docs/ARCHITECTURE.md, "Safe to publish"): a
/// 93 % cut of overselling for 98.8 % of raw publishing's sales.
pub const DEFAULT_SAFETY_LEVEL: u32 = 950;
/// The default time constant τ of the demand rate: one hour.
pub const DEFAULT_RATE_TIME_CONSTANT_MS: i64 = 3_600_000;

/// How often a shard advances its demand rates without holds (each SKU
/// with a rate is then written and published again, so its published
/// figure moves, and is streamed, as the rate decays).
pub const DEMAND_DECAY_INTERVAL_MS: i64 = 60_000;
/// The largest Poisson mean the quantile is computed for term by term;
/// beyond it a normal approximation (mean + z·√mean) is used.
const MAX_EXACT_MEAN: f64 = 500.0;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// An exponentially weighted demand rate of one SKU on one channel: units
/// held per hour *of exposure*, where exposure is time during which the
/// channel showed the SKU as available. While it shows none, shoppers
/// cannot buy, so that time says nothing about demand and neither the
/// holds nor the exposure decay (a sold-out SKU keeps the rate it sold
/// at). While it is exposed, both decay by `e^(−Δt/τ)`: the rate follows
/// demand with time constant τ, and moves on ticks without holds.
///
/// A rate starts at its first hold (`at_ms` then, no exposure before).
/// `rate = Σ units·w / max(Σ exposure·w, MIN_EXPOSURE)` with weights
/// `w = e^(−exposed age/τ)`: in steady Poisson demand of λ its mean is λ
/// from the first hour on, not only after several τ.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemandRate {
    /// Σ units·w.
    pub units: f64,
    /// Σ exposure·w, in ms.
    pub exposure_ms: f64,
    /// When both were last brought up to date.
    pub at_ms: i64,
}

/// The least exposure a rate is divided by (15 min): one early hold is
/// not read as a high rate.
pub const MIN_EXPOSURE_MS: f64 = 900_000.0;

impl DemandRate {
    /// Brings the rate to `now_ms`; `exposed`: whether the channel showed
    /// the SKU as available since `at_ms`. Time never runs backwards.
    pub fn advance(&mut self, now_ms: i64, exposed: bool, time_constant_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        self.at_ms = self.at_ms.max(now_ms);
        if !exposed || elapsed == 0.0 {
            return;
        }
        let tau = time_constant_ms.max(1) as f64;
        let keep = (-elapsed / tau).exp();
        self.units *= keep;
        self.exposure_ms = self.exposure_ms * keep + tau * (1.0 - keep);
    }

    /// Counts a hold of `units` at `now_ms` (after [`DemandRate::advance`]).
    pub fn record(&mut self, units: i64, now_ms: i64, exposed: bool, time_constant_ms: i64) {
        self.advance(now_ms, exposed, time_constant_ms);
        self.units += units.max(0) as f64;
    }

    /// Units per hour of exposure, as of `at_ms`.
    pub fn per_hour(&self) -> f64 {
        self.units / self.exposure_ms.max(MIN_EXPOSURE_MS) * MS_PER_HOUR
    }
}

/// The longest configurable publish lag: one day.
pub const MAX_PUBLISH_LAG_MS: i64 = 86_400_000;

/// How a channel publishes: its lag and its safety level. The default (lag
/// 0) publishes the channel ATP as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishRule {
    /// How long the channel takes to apply an update, in ms.
    pub lag_ms: i64,
    /// Per mille, 0..=[`MAX_SAFETY_LEVEL`]; 0 publishes the channel ATP.
    pub safety_level: u32,
}

impl Default for PublishRule {
    fn default() -> Self {
        PublishRule { lag_ms: 0, safety_level: DEFAULT_SAFETY_LEVEL }
    }
}

/// Units held back for `rate_per_hour` over `rule`'s lag: the
/// `safety_level` quantile of the Poisson demand during the lag.
pub fn held_back(rate_per_hour: f64, rule: &PublishRule) -> i64 {
    let level = rule.safety_level.min(MAX_SAFETY_LEVEL);
    if level == 0 || rule.lag_ms <= 0 || rate_per_hour.is_nan() || rate_per_hour <= 0.0 {
        return 0;
    }
    let mean = rate_per_hour * rule.lag_ms as f64 / MS_PER_HOUR;
    poisson_quantile(mean, f64::from(level) / 1000.0)
}

/// The figure to publish: channel ATP less what is held back, never
/// negative, never above the channel ATP.
pub fn safe_to_publish(channel_atp: i64, rate_per_hour: f64, rule: &PublishRule) -> i64 {
    let atp = channel_atp.max(0);
    (atp - held_back(rate_per_hour, rule)).clamp(0, atp)
}

/// The smallest `k` with P(Poisson(`mean`) ≤ k) ≥ `p` (0 < p < 1).
fn poisson_quantile(mean: f64, p: f64) -> i64 {
    if !mean.is_finite() || mean <= 0.0 {
        return 0;
    }
    if mean > MAX_EXACT_MEAN {
        // Normal approximation with a continuity correction.
        let z = normal_quantile(p);
        return (mean + z * mean.sqrt() + 0.5).ceil().max(0.0) as i64;
    }
    let mut term = (-mean).exp();
    let mut cumulative = term;
    let mut k = 0i64;
    // The tail past mean + 12σ is negligible: stop there at the latest.
    let last = (mean + 12.0 * mean.sqrt() + 12.0) as i64;
    while cumulative < p && k < last {
        k += 1;
        term *= mean / k as f64;
        cumulative += term;
    }
    k
}

/// The standard normal quantile (Acklam's rational approximation,
/// relative error under 1.2e-9), for 0 < p < 1.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: PublishRule = PublishRule { lag_ms: 60_000, safety_level: 950 };

    #[test]
    fn poisson_quantiles_match_the_tables() {
        // P(Poisson(1) ≤ 2) = 0.9197, ≤ 3 = 0.9810: the 95 % quantile is 3.
        assert_eq!(poisson_quantile(1.0, 0.95), 3);
        assert_eq!(poisson_quantile(1.0, 0.90), 2);
        // P(Poisson(0.05) ≤ 0) = 0.9512.
        assert_eq!(poisson_quantile(0.05, 0.95), 0);
        assert_eq!(poisson_quantile(0.06, 0.95), 1);
        // P(Poisson(10) ≤ 15) = 0.9513, ≤ 14 = 0.9165.
        assert_eq!(poisson_quantile(10.0, 0.95), 15);
        // Normal approximation: 1000 + 1.645·31.62 + 0.5 ≈ 1052.5.
        assert_eq!(poisson_quantile(1000.0, 0.95), 1053);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
    }

    #[test]
    fn the_published_figure_holds_back_the_lags_demand() {
        // 60 units an hour over 60 s: Poisson(1), 3 held back at 95 %.
        assert_eq!(held_back(60.0, &RULE), 3);
        assert_eq!(safe_to_publish(10, 60.0, &RULE), 7);
        assert_eq!(safe_to_publish(2, 60.0, &RULE), 0, "never negative");
        assert_eq!(safe_to_publish(-4, 60.0, &RULE), 0);
        assert_eq!(safe_to_publish(10, 0.0, &RULE), 10, "no demand, nothing held back");
        let off = PublishRule { safety_level: 0, ..RULE };
        assert_eq!(safe_to_publish(10, 600.0, &off), 10, "level 0 publishes the ATP");
        assert_eq!(safe_to_publish(10, f64::NAN, &RULE), 10);
    }

    #[test]
    fn the_rate_learns_holds_decays_while_exposed_and_waits_while_sold_out() {
        let tau = DEFAULT_RATE_TIME_CONSTANT_MS;
        // One unit a minute for 30 minutes: 60 an hour already.
        let mut rate = DemandRate::default();
        for minute in 1..=30 {
            rate.record(1, minute * 60_000, true, tau);
        }
        let early = rate.per_hour();
        assert!((55.0..65.0).contains(&early), "{early}");
        // A single early hold is not read as 60 an hour (15 min floor).
        let mut one = DemandRate::default();
        one.record(1, 60_000, true, tau);
        assert!((one.per_hour() - 4.0).abs() < 1e-9, "{}", one.per_hour());
        // Sold out for 5 h: nothing decays.
        let mut sold_out = rate;
        sold_out.advance(30 * 60_000 + 5 * 3_600_000, false, tau);
        assert_eq!(sold_out.per_hour(), early);
        // Exposed without holds: the rate falls, as e^(-t/τ) over the
        // weighted exposure.
        let mut quiet = rate;
        quiet.advance(30 * 60_000 + tau, true, tau);
        assert!(quiet.per_hour() < early / 2.0, "{}", quiet.per_hour());
        // A late event never moves the clock back.
        quiet.record(1, 0, true, tau);
        assert_eq!(quiet.at_ms, 30 * 60_000 + tau);
    }
}
