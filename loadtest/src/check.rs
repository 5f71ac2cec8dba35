//! After a run: the node's own numbers, read through the API, against what
//! it acknowledged and what the setup's stock events imply.
//!
//! - **Acknowledged means present**: every logged reservation is found in its
//!   acknowledged state or a legal successor ([`crate::AckEntry::allowed`]),
//!   with the lines that were sent (an Allocate: the lines its answer held;
//!   one whose answer never came, any lines holding exactly its order's
//!   units of each SKU at the setup's locations); a refused one does not
//!   exist.
//! - **Nothing oversold**: at every position of the setup
//!   `reserved + committed + unavailable + safety_stock <= on_hand` and no
//!   shortfall (the load generator sends only `received` events, so no fact
//!   can have caused one).
//! - **Units conserved**: `on_hand` is what the setup received; `reserved`
//!   and `committed` equal the sums over the reservations found (held
//!   units of HELD ones, unshipped committed units of COMMITTED ones).
//!
//! Holds may expire while the check reads, so it reads the reservations,
//! then the positions, then the reservations that could have changed again
//! (holds within 30 s of their expiry, operations in doubt);
//! if any did, it reads again, until two reads agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atp_client::{Client, Error};
use atp_proto::v1;
use futures::{StreamExt, stream};
use serde::Serialize;

use crate::LoadError;
use crate::acks::{AckEntry, AckLog, Found, LineRef};
use crate::client::{self, retry};
use crate::setup::{Names, Setup};

/// Longest wait for one answer while checking.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// GetReservation calls in flight at once.
const CHECK_CONCURRENCY: usize = 64;
/// Most SKUs per GetAvailability (the server's limit).
const MAX_SKUS_PER_READ: usize = 1_000;
/// How long reads may keep disagreeing (holds still expiring) before the
/// check gives up on a stable picture.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two reads that disagreed.
const SETTLE_PAUSE: Duration = Duration::from_millis(100);
/// A hold whose expiry is further away than this cannot expire between two
/// reads, so it is not read twice (allows for the node's clock being ahead
/// of this one by less than that), ms.
const EXPIRY_MARGIN_MS: i64 = 30_000;
/// Violations spelled out in the report (all are counted).
const MAX_REPORTED_VIOLATIONS: usize = 50;

/// What the check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Positions compared (sku × location of the setup).
    pub positions: usize,
    /// Reservations compared (every logged one).
    pub reservations: usize,
    /// How many reservations were found in each state.
    pub found: BTreeMap<String, usize>,
    /// Units held and committed over every position.
    pub reserved_units: i64,
    /// Unshipped committed units over every position.
    pub committed_units: i64,
    /// Reads of the positions until two reads of the reservations agreed.
    pub reads: u32,
    /// Violations found (only the first ones are in `violations`).
    pub violation_count: usize,
    /// The first violations, one sentence each.
    pub violations: Vec<String>,
}

impl CheckReport {
    /// Whether no invariant was violated.
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }

    fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_REPORTED_VIOLATIONS {
            self.violations.push(text);
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let found: Vec<String> =
            self.found.iter().map(|(state, count)| format!("{state}={count}")).collect();
        write!(
            f,
            "check {verdict}: {} positions, {} reservations ({}), {} units reserved, {} committed, \
             {} read(s)",
            self.positions,
            self.reservations,
            found.join(" "),
            self.reserved_units,
            self.committed_units,
            self.reads
        )?;
        if !self.passed() {
            write!(f, "\n{} violation(s):", self.violation_count)?;
            for violation in &self.violations {
                write!(f, "\n  {violation}")?;
            }
        }
        Ok(())
    }
}

/// A reservation as read: `None` when the node answered NOT_FOUND.
type Fetched = Option<v1::Reservation>;

/// Checks the invariants of the data of `setup` on the node at `endpoint`
/// against `acks` (the merged logs of every run over that setup). Errors
/// only when the node could not be read; broken invariants are in the report.
pub async fn check(endpoint: &str, setup: &Setup, acks: &AckLog) -> Result<CheckReport, LoadError> {
    let client = client::client(endpoint, CHECK_TIMEOUT)?;
    let ids: Vec<&str> = acks.iter().map(|(id, _)| id).collect();
    let mut found = fetch(&client, &ids).await?;
    let mut report = CheckReport::default();
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    let positions = loop {
        report.reads += 1;
        let positions = read_positions(&client, setup).await?;
        let now_ms = wall_clock_ms();
        let unsettled: Vec<&str> = found
            .iter()
            .filter(|(id, fetched)| may_change(fetched, acks.get(id), now_ms))
            .map(|(id, _)| *id)
            .collect();
        let again = fetch(&client, &unsettled).await?;
        let changed = again.iter().filter(|(id, fetched)| found.get(*id) != Some(fetched)).count();
        found.extend(again);
        if changed == 0 {
            break positions;
        }
        if tokio::time::Instant::now() >= deadline {
            report.violation(format!(
                "no stable picture after {:?}: {changed} reservations still changing",
                SETTLE_DEADLINE
            ));
            break positions;
        }
        tokio::time::sleep(SETTLE_PAUSE).await;
    };
    compare(&mut report, setup, acks, &found, &positions);
    Ok(report)
}

/// Whether a reservation could still change now that no client sends
/// anything: a hold near or past its expiry may expire; an operation whose
/// answer was lost may still be finishing on the node.
fn may_change(fetched: &Fetched, entry: Option<&AckEntry>, now_ms: i64) -> bool {
    let in_doubt = entry.is_some_and(|entry| !entry.in_doubt.is_empty());
    match fetched {
        Some(reservation) => {
            reservation.state() == v1::ReservationState::Held
                && (in_doubt || reservation.expires_at_ms <= now_ms + EXPIRY_MARGIN_MS)
        }
        None => in_doubt,
    }
}

fn wall_clock_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

async fn fetch<'a>(
    client: &Client,
    ids: &[&'a str],
) -> Result<HashMap<&'a str, Fetched>, LoadError> {
    let reads = ids.iter().map(|&id| async move {
        let request = v1::GetReservationRequest { reservation_id: id.to_owned() };
        let fetched = retry("get reservation", || {
            let request = request.clone();
            async move {
                match client.rpc().get_reservation(request).await {
                    Ok(response) => Ok(response.reservation),
                    Err(Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(error),
                }
            }
        })
        .await?;
        Ok::<_, LoadError>((id, fetched))
    });
    stream::iter(reads)
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Every position of the setup, by (sku index, location index).
async fn read_positions(
    client: &Client,
    setup: &Setup,
) -> Result<HashMap<(u32, u16), v1::LocationAvailability>, LoadError> {
    let names = Names::new(setup);
    let mut positions = HashMap::with_capacity(setup.position_count());
    for skus in setup.skus.chunks(MAX_SKUS_PER_READ) {
        let request = v1::GetAvailabilityRequest {
            skus: skus.to_vec(),
            location_ids: setup.locations.clone(),
            channel_ids: vec![setup.channel.clone()],
        };
        let response =
            retry("get availability", || client.rpc().get_availability(request.clone())).await?;
        for sku in response.skus {
            for position in sku.locations {
                if let Some(at) = names.position(&sku.sku, &position.location_id) {
                    positions.insert(at, position);
                }
            }
        }
    }
    Ok(positions)
}

fn found_state(fetched: &Fetched) -> Found {
    let Some(reservation) = fetched else { return Found::Missing };
    match reservation.state() {
        v1::ReservationState::Held => Found::Held,
        v1::ReservationState::Committed => Found::Committed,
        v1::ReservationState::Released => Found::Released,
        v1::ReservationState::Expired => Found::Expired,
        v1::ReservationState::Cancelled => Found::Cancelled,
        v1::ReservationState::Fulfilled => Found::Fulfilled,
        // The wire never shows a pending reservation; count it as absent so
        // the comparison with the log flags it.
        v1::ReservationState::Unspecified => Found::Missing,
    }
}

/// The comparison, on what was read.
fn compare(
    report: &mut CheckReport,
    setup: &Setup,
    acks: &AckLog,
    found: &HashMap<&str, Fetched>,
    positions: &HashMap<(u32, u16), v1::LocationAvailability>,
) {
    let names = Names::new(setup);
    let mut reserved: HashMap<(u32, u16), i64> = HashMap::new();
    let mut committed: HashMap<(u32, u16), i64> = HashMap::new();
    let mut states: BTreeMap<Found, usize> = BTreeMap::new();
    for (id, entry) in acks.iter() {
        report.reservations += 1;
        let fetched = found.get(id).expect("every logged reservation was read");
        let state = found_state(fetched);
        *states.entry(state).or_default() += 1;
        if !entry.allowed().contains(&state) {
            report.violation(format!(
                "reservation {id}: acknowledged {:?} (in doubt: {:?}), found {state:?}",
                entry.acked, entry.in_doubt
            ));
        }
        let Some(reservation) = fetched else { continue };
        let mut lines = Vec::with_capacity(reservation.lines.len());
        for line in &reservation.lines {
            let Some((sku, location)) = names.position(&line.sku, &line.location_id) else {
                report.violation(format!(
                    "reservation {id}: line {}@{} is not of this setup",
                    line.sku, line.location_id
                ));
                continue;
            };
            lines.push(LineRef { sku, location, quantity: line.quantity });
            match state {
                Found::Held => *reserved.entry((sku, location)).or_default() += line.quantity,
                Found::Committed => {
                    *committed.entry((sku, location)).or_default() += line.committed - line.shipped;
                    if line.committed != line.quantity {
                        report.violation(format!(
                            "reservation {id}: {}@{} committed {} of {} (every commit sent \
                             commits all)",
                            line.sku, line.location_id, line.committed, line.quantity
                        ));
                    }
                }
                Found::Missing
                | Found::Released
                | Found::Expired
                | Found::Cancelled
                | Found::Fulfilled => {}
            }
        }
        lines.sort();
        if let Some(mismatch) = lines_mismatch(entry, &lines) {
            report.violation(format!("reservation {id}: {mismatch}"));
        }
    }
    report.found = states.into_iter().map(|(state, count)| (format!("{state:?}"), count)).collect();

    for sku in 0..setup.skus.len() as u32 {
        for location in 0..setup.locations.len() as u16 {
            report.positions += 1;
            let name =
                format!("{}@{}", setup.skus[sku as usize], setup.locations[usize::from(location)]);
            let Some(position) = positions.get(&(sku, location)) else {
                report.violation(format!("{name}: no position (stock was received there)"));
                continue;
            };
            report.reserved_units += position.reserved;
            report.committed_units += position.committed;
            if position.on_hand != setup.stock_per_position {
                report.violation(format!(
                    "{name}: on_hand {} but the stock events sent imply {}",
                    position.on_hand, setup.stock_per_position
                ));
            }
            let claims = position.reserved
                + position.committed
                + position.unavailable
                + position.safety_stock;
            if claims > position.on_hand || position.shortfall != 0 {
                report.violation(format!(
                    "{name}: oversold: reserved {} + committed {} + unavailable {} + safety {} \
                     against on_hand {} (shortfall {})",
                    position.reserved,
                    position.committed,
                    position.unavailable,
                    position.safety_stock,
                    position.on_hand,
                    position.shortfall
                ));
            }
            let held = reserved.get(&(sku, location)).copied().unwrap_or(0);
            if position.reserved != held {
                report.violation(format!(
                    "{name}: reserved {} but the HELD reservations hold {held}",
                    position.reserved
                ));
            }
            let ordered = committed.get(&(sku, location)).copied().unwrap_or(0);
            if position.committed != ordered {
                report.violation(format!(
                    "{name}: committed {} but the COMMITTED reservations commit {ordered}",
                    position.committed
                ));
            }
        }
    }
}

/// Why `found` (a reservation's lines as read, sorted) cannot be the lines
/// of `entry`, if they cannot: a Reserve's must be the lines sent, an
/// answered Allocate's the lines its answer held; an Allocate's, answered or
/// not, must hold exactly the order's units of each SKU (all or nothing) on
/// distinct positions.
fn lines_mismatch(entry: &AckEntry, found: &[LineRef]) -> Option<String> {
    if !entry.lines.is_empty() || entry.order.is_empty() {
        let mut sent = entry.lines.clone();
        sent.sort();
        if found != sent {
            return Some(format!("lines {found:?} differ from the lines sent {sent:?}"));
        }
    }
    if entry.order.is_empty() {
        return None;
    }
    let mut ordered: BTreeMap<u32, i64> = BTreeMap::new();
    for line in &entry.order {
        *ordered.entry(line.sku).or_default() += line.quantity;
    }
    let mut held: BTreeMap<u32, i64> = BTreeMap::new();
    let mut positions = BTreeSet::new();
    for line in found {
        *held.entry(line.sku).or_default() += line.quantity;
        if !positions.insert((line.sku, line.location)) {
            return Some(format!("lines {found:?} name a position twice"));
        }
    }
    (held != ordered).then(|| {
        format!("lines {found:?} differ from the order: units by SKU {held:?}, ordered {ordered:?}")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::acks::{Acked, OrderRef};

    fn line(sku: u32, location: u16, quantity: i64) -> LineRef {
        LineRef { sku, location, quantity }
    }

    fn entry(lines: Vec<LineRef>, order: Vec<OrderRef>) -> AckEntry {
        AckEntry { lines, order, acked: Some(Acked::Held), in_doubt: BTreeSet::new() }
    }

    #[test]
    fn a_reserve_holds_the_lines_sent() {
        let sent = entry(vec![line(1, 0, 2), line(0, 1, 1)], Vec::new());
        assert_eq!(lines_mismatch(&sent, &[line(0, 1, 1), line(1, 0, 2)]), None);
        let message = lines_mismatch(&sent, &[line(0, 0, 1), line(1, 0, 2)]).expect("moved");
        assert!(message.contains("differ"), "{message}");
    }

    #[test]
    fn an_allocate_in_doubt_may_hold_its_order_anywhere() {
        let order = vec![OrderRef { sku: 0, quantity: 3 }, OrderRef { sku: 4, quantity: 1 }];
        let unknown = entry(Vec::new(), order.clone());
        let split = [line(0, 0, 1), line(0, 2, 2), line(4, 1, 1)];
        assert_eq!(lines_mismatch(&unknown, &split), None);
        assert_eq!(lines_mismatch(&unknown, &[line(0, 5, 3), line(4, 5, 1)]), None);
        for wrong in [
            vec![line(0, 0, 2), line(4, 1, 1)],
            vec![line(0, 0, 3)],
            vec![line(0, 0, 3), line(4, 1, 1), line(7, 1, 1)],
            vec![line(0, 0, 1), line(0, 0, 2), line(4, 1, 1)],
        ] {
            assert!(lines_mismatch(&unknown, &wrong).is_some(), "{wrong:?} passed");
        }
        // Answered: exactly the lines the answer held.
        let answered = entry(split.to_vec(), order);
        assert_eq!(lines_mismatch(&answered, &split), None);
        assert!(lines_mismatch(&answered, &[line(0, 5, 3), line(4, 5, 1)]).is_some());
    }
}
