//! Small formatting helpers shared by the commands: times, enum names, signed deltas.

use std::time::{SystemTime, UNIX_EPOCH};

use atp_proto::v1::{LocationKind, ReservationState, StockEventOutcome};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time (`2023-11-14T22:13:20.000Z`); 0 is `-`.
pub fn time_ms(ms: i64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `+3`, `-2`, or `0`.
pub fn signed(value: i64) -> String {
    if value > 0 { format!("+{value}") } else { value.to_string() }
}

/// `value`, followed by `(+delta)` when the delta is not zero.
pub fn with_delta(value: i64, delta: i64) -> String {
    if delta == 0 { value.to_string() } else { format!("{value} ({})", signed(delta)) }
}

/// `HELD`, `COMMITTED`, …; an unknown number is shown as such.
pub fn reservation_state(state: i32) -> String {
    match ReservationState::try_from(state) {
        Ok(state) => short_name(state.as_str_name(), "RESERVATION_STATE_"),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// `APPLIED`, `DUPLICATE`, `REJECTED`.
pub fn stock_event_outcome(outcome: i32) -> String {
    match StockEventOutcome::try_from(outcome) {
        Ok(outcome) => short_name(outcome.as_str_name(), "STOCK_EVENT_OUTCOME_"),
        Err(_) => format!("UNKNOWN({outcome})"),
    }
}

/// The location kind as the CLI and the config file spell it: `warehouse`, `store`, `3pl`.
pub fn location_kind(kind: i32) -> String {
    match LocationKind::try_from(kind) {
        Ok(LocationKind::Warehouse) => "warehouse".to_owned(),
        Ok(LocationKind::Store) => "store".to_owned(),
        Ok(LocationKind::ThirdParty) => "3pl".to_owned(),
        Ok(LocationKind::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown({kind})"),
    }
}

/// A gRPC code number as its name and number, e.g. `FailedPrecondition (9)`.
pub fn grpc_code(code: i32) -> String {
    format!("{:?} ({code})", tonic::Code::from(code))
}

fn short_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_ms(0), "-");
        assert_eq!(time_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn deltas_carry_a_sign() {
        assert_eq!(signed(3), "+3");
        assert_eq!(signed(-2), "-2");
        assert_eq!(with_delta(10, 0), "10");
        assert_eq!(with_delta(10, -4), "10 (-4)");
    }

    #[test]
    fn enum_names_are_short() {
        assert_eq!(reservation_state(ReservationState::Held as i32), "HELD");
        assert_eq!(reservation_state(99), "UNKNOWN(99)");
        assert_eq!(stock_event_outcome(StockEventOutcome::Rejected as i32), "REJECTED");
        assert_eq!(location_kind(LocationKind::ThirdParty as i32), "3pl");
        assert_eq!(grpc_code(9), "FailedPrecondition (9)");
    }
}
