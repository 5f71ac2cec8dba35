//! Plain Rust types for the common flows (reserve, commit, release,
//! allocate), and their conversions from and to the `atp.v1` messages.

mod allocate;

use atp_proto::v1;

use crate::Error;

pub use allocate::{
    Allocate, Allocation, Destination, ExcludedLocation, FillRule, OrderLine, Plan, RoutingPolicy,
    Shipment,
};

/// One line of a Reserve: `quantity` units of `sku` at `location_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The SKU.
    pub sku: String,
    /// The location the units are held at.
    pub location_id: String,
    /// Units (1..=1,000,000).
    pub quantity: i64,
}

impl Line {
    /// `quantity` units of `sku` at `location_id`.
    pub fn new(sku: impl Into<String>, location_id: impl Into<String>, quantity: i64) -> Self {
        Self { sku: sku.into(), location_id: location_id.into(), quantity }
    }
}

/// A Reserve: hold every line or none, for `channel_id`, idempotent by
/// `reservation_id` (sending it again returns the first answer).
#[derive(Clone, Debug, PartialEq)]
pub struct Reserve {
    /// Caller-chosen idempotency key.
    pub reservation_id: String,
    /// The channel whose rules the hold respects.
    pub channel_id: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// Hold lifetime in seconds; 0 means the server's default.
    pub ttl_seconds: u32,
    /// The caller's order id and labels, returned with the reservation
    /// everywhere (part of the payload: a retry must send the same).
    pub metadata: Option<v1::ReservationMetadata>,
}

impl Reserve {
    /// A Reserve without lines yet, with the server's default lifetime.
    pub fn new(reservation_id: impl Into<String>, channel_id: impl Into<String>) -> Self {
        Self {
            reservation_id: reservation_id.into(),
            channel_id: channel_id.into(),
            lines: Vec::new(),
            ttl_seconds: 0,
            metadata: None,
        }
    }

    /// Sets the caller's order (or cart) id.
    pub fn order_id(mut self, order_id: impl Into<String>) -> Self {
        self.metadata.get_or_insert_with(Default::default).order_id = order_id.into();
        self
    }

    /// Adds a label (at most 8; keys of `[A-Za-z0-9_.-]`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.get_or_insert_with(Default::default).labels.insert(key.into(), value.into());
        self
    }

    /// Adds a line.
    pub fn line(
        mut self,
        sku: impl Into<String>,
        location_id: impl Into<String>,
        quantity: i64,
    ) -> Self {
        self.lines.push(Line::new(sku, location_id, quantity));
        self
    }

    /// Sets the hold lifetime.
    pub fn ttl_seconds(mut self, ttl_seconds: u32) -> Self {
        self.ttl_seconds = ttl_seconds;
        self
    }
}

impl From<Line> for v1::ReservationLine {
    fn from(line: Line) -> Self {
        Self { sku: line.sku, location_id: line.location_id, quantity: line.quantity }
    }
}

impl From<Reserve> for v1::ReserveRequest {
    fn from(reserve: Reserve) -> Self {
        Self {
            reservation_id: reserve.reservation_id,
            channel_id: reserve.channel_id,
            lines: reserve.lines.into_iter().map(Into::into).collect(),
            ttl_seconds: reserve.ttl_seconds,
            metadata: reserve.metadata,
        }
    }
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Units are held until `expires_at_ms`.
    Held,
    /// An order: units are committed until shipped or cancelled.
    Committed,
    /// Released by the caller before it expired.
    Released,
    /// Its hold ran out.
    Expired,
    /// A commit cancelled; its unshipped units were freed.
    Cancelled,
    /// Every committed unit shipped.
    Fulfilled,
    /// A state this SDK does not know (a newer server).
    Unknown(i32),
}

impl From<i32> for ReservationState {
    fn from(value: i32) -> Self {
        match v1::ReservationState::try_from(value) {
            Ok(v1::ReservationState::Held) => Self::Held,
            Ok(v1::ReservationState::Committed) => Self::Committed,
            Ok(v1::ReservationState::Released) => Self::Released,
            Ok(v1::ReservationState::Expired) => Self::Expired,
            Ok(v1::ReservationState::Cancelled) => Self::Cancelled,
            Ok(v1::ReservationState::Fulfilled) => Self::Fulfilled,
            Ok(v1::ReservationState::Unspecified) | Err(_) => Self::Unknown(value),
        }
    }
}

/// A line of a reservation and how far it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationLine {
    /// The SKU.
    pub sku: String,
    /// Its location.
    pub location_id: String,
    /// Units held by the Reserve.
    pub quantity: i64,
    /// Units committed (0 until Commit).
    pub committed: i64,
    /// Committed units shipped so far.
    pub shipped: i64,
}

/// A reservation as the server answered it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    /// Its id.
    pub reservation_id: String,
    /// Its channel.
    pub channel_id: String,
    /// Its state.
    pub state: ReservationState,
    /// Its lines.
    pub lines: Vec<ReservationLine>,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When its hold runs out (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// When it ended (released, expired, cancelled, fulfilled); 0 otherwise.
    pub ended_at_ms: i64,
    /// Epoch of the shard that answered.
    pub epoch: u64,
    /// The caller's order id and labels, as sent with the Reserve.
    pub metadata: Option<v1::ReservationMetadata>,
    /// True when the call had been done before and this is its first answer
    /// again: the same Reserve (same id, same payload), a Commit, Release or
    /// Cancel of a reservation already in that state, an Extend or a Modify
    /// with the same request id (and the same ttl or lines). The fields above are then that first answer, and
    /// [`Reservation::current`] the reservation as it stands now. False for
    /// GetReservation, and for an [`Allocation`]'s reservation (a replayed
    /// Allocate says so in [`Allocation::replayed`] and answers with the
    /// reservation as it stands now).
    pub replayed: bool,
    /// Set when `replayed`: the reservation as it stands now (a replayed
    /// Reserve may find it committed, released or expired since). Its own
    /// `replayed` is false and its `current` empty.
    pub current: Option<Box<Reservation>>,
}

impl Reservation {
    /// The reservation as it stands now: [`Reservation::current`] when the
    /// answer was replayed, else this answer itself.
    pub fn latest(&self) -> &Reservation {
        self.current.as_deref().unwrap_or(self)
    }

    /// The reservation of a reply that may answer a retry (`replayed`, with
    /// the `current` reservation).
    pub(crate) fn from_replayable_reply(
        reservation: Option<v1::Reservation>,
        epoch: u64,
        replayed: bool,
        current: Option<v1::Reservation>,
    ) -> Result<Self, Error> {
        let mut answer = Self::from_reply(reservation, epoch)?;
        answer.replayed = replayed;
        // The proto sets `current` only when replayed; an older server may
        // send neither, and then there is nothing more to say.
        if replayed && let Some(current) = current {
            answer.current = Some(Box::new(Self::from_reply(Some(current), epoch)?));
        }
        Ok(answer)
    }

    /// The reservation in a reply, which every reservation reply carries.
    pub(crate) fn from_reply(
        reservation: Option<v1::Reservation>,
        epoch: u64,
    ) -> Result<Self, Error> {
        let reservation = reservation.ok_or_else(|| Error::Other {
            code: tonic::Code::Internal,
            reason: None,
            message: "the reply carries no reservation".to_owned(),
            status: None,
        })?;
        Ok(Self {
            reservation_id: reservation.reservation_id,
            channel_id: reservation.channel_id,
            state: ReservationState::from(reservation.state),
            lines: reservation
                .lines
                .into_iter()
                .map(|line| ReservationLine {
                    sku: line.sku,
                    location_id: line.location_id,
                    quantity: line.quantity,
                    committed: line.committed,
                    shipped: line.shipped,
                })
                .collect(),
            created_at_ms: reservation.created_at_ms,
            expires_at_ms: reservation.expires_at_ms,
            ended_at_ms: reservation.ended_at_ms,
            epoch,
            metadata: reservation.metadata,
            replayed: false,
            current: None,
        })
    }
}

impl From<ReservationState> for i32 {
    fn from(state: ReservationState) -> Self {
        let state = match state {
            ReservationState::Held => v1::ReservationState::Held,
            ReservationState::Committed => v1::ReservationState::Committed,
            ReservationState::Released => v1::ReservationState::Released,
            ReservationState::Expired => v1::ReservationState::Expired,
            ReservationState::Cancelled => v1::ReservationState::Cancelled,
            ReservationState::Fulfilled => v1::ReservationState::Fulfilled,
            ReservationState::Unknown(value) => return value,
        };
        state.into()
    }
}

impl From<Reservation> for v1::Reservation {
    /// The message again (the epoch, `replayed` and `current` are not part
    /// of it), for code that prints or forwards messages.
    fn from(reservation: Reservation) -> Self {
        Self {
            reservation_id: reservation.reservation_id,
            channel_id: reservation.channel_id,
            state: reservation.state.into(),
            lines: reservation
                .lines
                .into_iter()
                .map(|line| v1::ReservationLineState {
                    sku: line.sku,
                    location_id: line.location_id,
                    quantity: line.quantity,
                    committed: line.committed,
                    shipped: line.shipped,
                })
                .collect(),
            created_at_ms: reservation.created_at_ms,
            expires_at_ms: reservation.expires_at_ms,
            ended_at_ms: reservation.ended_at_ms,
            metadata: reservation.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_becomes_its_request() {
        let reserve = Reserve::new("r-1", "web").line("tee", "dc-1", 2).ttl_seconds(60);
        let request = v1::ReserveRequest::from(reserve);
        assert_eq!(request.reservation_id, "r-1");
        assert_eq!(request.lines[0].location_id, "dc-1");
        assert_eq!((request.lines[0].quantity, request.ttl_seconds), (2, 60));
    }

    #[test]
    fn a_replayed_reply_keeps_the_current_reservation() {
        let message = |state: v1::ReservationState| v1::Reservation {
            reservation_id: "r-1".into(),
            state: state.into(),
            ..Default::default()
        };
        let held = Some(message(v1::ReservationState::Held));
        let released = Some(message(v1::ReservationState::Released));
        let replayed = Reservation::from_replayable_reply(held.clone(), 3, true, released.clone())
            .expect("a reservation");
        assert!(replayed.replayed);
        assert_eq!(replayed.state, ReservationState::Held, "the first answer");
        let current = replayed.current.as_deref().expect("the current reservation");
        assert_eq!((current.state, current.epoch), (ReservationState::Released, 3));
        assert_eq!(replayed.latest().state, ReservationState::Released);

        let first =
            Reservation::from_replayable_reply(held, 3, false, released).expect("a reservation");
        assert_eq!((first.replayed, first.current.is_none()), (false, true));
        assert_eq!(first.latest().state, ReservationState::Held);
    }

    #[test]
    fn an_unknown_state_keeps_its_number() {
        assert_eq!(ReservationState::from(2), ReservationState::Committed);
        assert_eq!(ReservationState::from(42), ReservationState::Unknown(42));
        for number in 1..=6 {
            assert_eq!(i32::from(ReservationState::from(number)), number);
        }
        assert_eq!(i32::from(ReservationState::Unknown(42)), 42);
    }
}
