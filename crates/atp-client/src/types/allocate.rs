//! Allocate in plain types: the order ([`Allocate`]) and the answer
//! ([`Allocation`]: the reservation holding the chosen [`Plan`], the
//! alternatives and the locations left out).

use atp_proto::v1;

use super::Reservation;
use crate::Error;

/// What an order is planned for (the default: the least total cost).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoutingPolicy {
    /// Least total cost: the shipments' costs plus the split penalty.
    #[default]
    LowestCost,
    /// Smallest largest shipment distance, then smallest sum of distances.
    Nearest,
    /// Fewest shipments, then least cost.
    FewestShipments,
}

/// How much of an order must be held (the default: all of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FillRule {
    /// Every unit of every line, or nothing ([`Error::InsufficientStock`]).
    #[default]
    AllOrNothing,
    /// Hold what can be held; the rest is reported in [`Plan::backordered`].
    Partial,
}

/// Where an order goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    /// Degrees, -90..=90.
    pub latitude: f64,
    /// Degrees, -180..=180.
    pub longitude: f64,
    /// ISO 3166-1 alpha-2, e.g. `US`.
    pub country: String,
    /// ISO 3166-2, e.g. `US-CA`; empty when not known.
    pub region: String,
}

impl Destination {
    /// A point in `country`, without a region.
    pub fn new(country: impl Into<String>, latitude: f64, longitude: f64) -> Self {
        Self { latitude, longitude, country: country.into(), region: String::new() }
    }

    /// Sets the region (ISO 3166-2 of the country, e.g. `US-CA`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }
}

/// Units of a SKU: a line of an order, of a shipment, or what was not filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// An Allocate: choose the locations that ship an order and hold their
/// stock as a reservation under `order_id`, idempotent by the order id and
/// the whole request (sending it again returns the first plan, with
/// [`Allocation::replayed`] set).
#[derive(Clone, Debug, PartialEq)]
pub struct Allocate {
    /// The order's id: the idempotency key and the id of the reservation.
    pub order_id: String,
    /// The channel whose locations, buffer and cap bind the order.
    pub channel_id: String,
    /// Where the order goes.
    pub destination: Destination,
    /// 1..=50 lines; a SKU may appear on several (its units are summed).
    pub lines: Vec<OrderLine>,
    /// What the plan is chosen for.
    pub policy: RoutingPolicy,
    /// Most shipments (1..=10); 0 means the server's default (4).
    pub max_shipments: u32,
    /// False: one shipment only.
    pub allow_split: bool,
    /// Whether a short order holds nothing or its part.
    pub fill: FillRule,
    /// Hold lifetime in seconds; 0 means the server's default.
    pub ttl_seconds: u32,
    /// Plan and explain without holding anything.
    pub dry_run: bool,
    /// Minor currency units added per shipment beyond the first.
    pub split_penalty: i64,
    /// Most plans the planner evaluates (1..=1,000,000); 0 means the
    /// server's default (20,000).
    pub work_budget: u32,
    /// Labels (and an order id other than `order_id`) kept on the
    /// reservation; the label key `atp.allocate` is the server's.
    pub metadata: Option<v1::ReservationMetadata>,
}

impl Allocate {
    /// An order without lines yet, to `destination`, under the server's
    /// defaults: lowest cost, split allowed, all or nothing.
    pub fn new(
        order_id: impl Into<String>,
        channel_id: impl Into<String>,
        destination: Destination,
    ) -> Self {
        Self {
            order_id: order_id.into(),
            channel_id: channel_id.into(),
            destination,
            lines: Vec::new(),
            policy: RoutingPolicy::default(),
            max_shipments: 0,
            allow_split: true,
            fill: FillRule::default(),
            ttl_seconds: 0,
            dry_run: false,
            split_penalty: 0,
            work_budget: 0,
            metadata: None,
        }
    }

    /// Adds a line.
    pub fn line(mut self, sku: impl Into<String>, quantity: i64) -> Self {
        self.lines.push(OrderLine { sku: sku.into(), quantity });
        self
    }

    /// Sets the policy.
    pub fn policy(mut self, policy: RoutingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the most shipments.
    pub fn max_shipments(mut self, max_shipments: u32) -> Self {
        self.max_shipments = max_shipments;
        self
    }

    /// Allows one shipment only.
    pub fn no_split(mut self) -> Self {
        self.allow_split = false;
        self
    }

    /// Sets the fill rule.
    pub fn fill(mut self, fill: FillRule) -> Self {
        self.fill = fill;
        self
    }

    /// Sets the hold lifetime.
    pub fn ttl_seconds(mut self, ttl_seconds: u32) -> Self {
        self.ttl_seconds = ttl_seconds;
        self
    }

    /// Plans and explains without holding.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// Sets the cost of each shipment beyond the first.
    pub fn split_penalty(mut self, split_penalty: i64) -> Self {
        self.split_penalty = split_penalty;
        self
    }

    /// Sets the planner's work budget.
    pub fn work_budget(mut self, work_budget: u32) -> Self {
        self.work_budget = work_budget;
        self
    }

    /// Adds a label (at most 7: Allocate keeps one for itself).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.get_or_insert_with(Default::default).labels.insert(key.into(), value.into());
        self
    }
}

impl From<RoutingPolicy> for v1::RoutingPolicy {
    fn from(policy: RoutingPolicy) -> Self {
        match policy {
            RoutingPolicy::LowestCost => Self::LowestCost,
            RoutingPolicy::Nearest => Self::Nearest,
            RoutingPolicy::FewestShipments => Self::FewestShipments,
        }
    }
}

impl From<FillRule> for v1::FillRule {
    fn from(fill: FillRule) -> Self {
        match fill {
            FillRule::AllOrNothing => Self::AllOrNothing,
            FillRule::Partial => Self::Partial,
        }
    }
}

impl From<OrderLine> for v1::OrderLine {
    fn from(line: OrderLine) -> Self {
        Self { sku: line.sku, quantity: line.quantity }
    }
}

impl From<v1::OrderLine> for OrderLine {
    fn from(line: v1::OrderLine) -> Self {
        Self { sku: line.sku, quantity: line.quantity }
    }
}

impl From<Allocate> for v1::AllocateRequest {
    fn from(allocate: Allocate) -> Self {
        let destination = allocate.destination;
        Self {
            order_id: allocate.order_id,
            channel_id: allocate.channel_id,
            destination: Some(v1::Destination {
                latitude: destination.latitude,
                longitude: destination.longitude,
                country: destination.country,
                region: destination.region,
            }),
            lines: allocate.lines.into_iter().map(Into::into).collect(),
            // The server's defaults go out unset, as from a caller that
            // leaves them out: a retry is recognised by the request as sent,
            // so the same order from any client must be the same request.
            policy: if allocate.policy == RoutingPolicy::default() {
                v1::RoutingPolicy::Unspecified.into()
            } else {
                v1::RoutingPolicy::from(allocate.policy).into()
            },
            max_shipments: allocate.max_shipments,
            allow_split: (!allocate.allow_split).then_some(false),
            fill: if allocate.fill == FillRule::default() {
                v1::FillRule::Unspecified.into()
            } else {
                v1::FillRule::from(allocate.fill).into()
            },
            ttl_seconds: allocate.ttl_seconds,
            dry_run: allocate.dry_run,
            split_penalty: allocate.split_penalty,
            work_budget: allocate.work_budget,
            metadata: allocate.metadata,
            // What this SDK does not set stays unset.
            ..Default::default()
        }
    }
}

/// One location's part of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Shipment {
    /// The location that ships.
    pub location_id: String,
    /// Great-circle distance to the destination.
    pub distance_km: f64,
    /// What the shipment costs, in minor currency units.
    pub cost: i64,
    /// Units of each SKU it ships.
    pub lines: Vec<OrderLine>,
    /// Units in all.
    pub units: i64,
    /// Shipments the location can still make today after this one; `None`
    /// when unlimited.
    pub orders_left: Option<i64>,
    /// Units the location can still ship today after this one; `None` when
    /// unlimited.
    pub units_left: Option<i64>,
}

/// A plan: the shipments an order is split into.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The shipments.
    pub shipments: Vec<Shipment>,
    /// The shipments' costs plus the split penalty per extra shipment.
    pub cost: i64,
    /// Units filled.
    pub units: i64,
    /// The farthest shipment's distance.
    pub max_distance_km: f64,
    /// The shipments' distances added up.
    pub total_distance_km: f64,
    /// Units not filled, per SKU (a partial fill only).
    pub backordered: Vec<OrderLine>,
}

impl From<v1::PlannedShipment> for Shipment {
    fn from(shipment: v1::PlannedShipment) -> Self {
        Self {
            location_id: shipment.location_id,
            distance_km: shipment.distance_km,
            cost: shipment.cost,
            lines: shipment.lines.into_iter().map(Into::into).collect(),
            units: shipment.units,
            orders_left: shipment.orders_left,
            units_left: shipment.units_left,
        }
    }
}

impl From<v1::RoutingPlan> for Plan {
    fn from(plan: v1::RoutingPlan) -> Self {
        Self {
            shipments: plan.shipments.into_iter().map(Into::into).collect(),
            cost: plan.cost,
            units: plan.units,
            max_distance_km: plan.max_distance_km,
            total_distance_km: plan.total_distance_km,
            backordered: plan.backordered.into_iter().map(Into::into).collect(),
        }
    }
}

/// A channel location the planner left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExcludedLocation {
    /// The location.
    pub location_id: String,
    /// Why, as the server spells it: `NOT_ACTIVE`, `DOES_NOT_SHIP_THERE`,
    /// `NO_CAPACITY` or `NO_STOCK`.
    pub reason: String,
}

/// The answer to an [`Allocate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// The reservation holding the plan, under the order id (`None` on a
    /// dry run). An ordinary reservation: commit, release or get it by
    /// the order id. On a replay, the reservation as it stands now.
    pub reservation: Option<Reservation>,
    /// The chosen plan. On a replay, the reservation's lines as shipments
    /// with today's distances and costs.
    pub plan: Plan,
    /// The next best plans, best first (at most 3; none on a replay).
    pub alternatives: Vec<Plan>,
    /// The channel's locations left out, and why.
    pub excluded: Vec<ExcludedLocation>,
    /// Plans evaluated.
    pub work: u32,
    /// Whether that was every combination (the plan is the best there is).
    pub exact: bool,
    /// True when nothing was held (a dry run).
    pub dry_run: bool,
    /// True when the same Allocate (same order id, same request) had been
    /// done before and this answers a retry: nothing was held again.
    pub replayed: bool,
    /// Plans made: more than 1 when a hold lost a race for stock and the
    /// order was planned again.
    pub attempts: u32,
    /// Epoch of the shard that answered.
    pub epoch: u64,
}

impl Allocation {
    /// The answer in an Allocate reply, which always carries a plan, and a
    /// reservation unless it is a dry run.
    pub(crate) fn from_reply(reply: v1::AllocateResponse) -> Result<Self, Error> {
        let malformed = |what: &str| Error::Other {
            code: tonic::Code::Internal,
            reason: None,
            message: format!("the Allocate reply carries no {what}"),
            status: None,
        };
        let plan = reply.plan.ok_or_else(|| malformed("plan"))?;
        let reservation = match reply.reservation {
            Some(reservation) => Some(Reservation::from_reply(Some(reservation), reply.epoch)?),
            None if reply.dry_run => None,
            None => return Err(malformed("reservation")),
        };
        Ok(Self {
            reservation,
            plan: plan.into(),
            alternatives: reply.alternatives.into_iter().map(Into::into).collect(),
            excluded: reply
                .excluded
                .into_iter()
                .map(|excluded| ExcludedLocation {
                    location_id: excluded.location_id,
                    reason: excluded.reason,
                })
                .collect(),
            work: reply.work,
            exact: reply.exact,
            dry_run: reply.dry_run,
            replayed: reply.replayed,
            attempts: reply.attempts,
            epoch: reply.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocate_becomes_its_request() {
        let destination = Destination::new("US", 37.8, -122.4).region("US-CA");
        let allocate = Allocate::new("o-1", "web", destination)
            .line("tee", 2)
            .line("mug", 1)
            .policy(RoutingPolicy::Nearest)
            .fill(FillRule::Partial)
            .max_shipments(2)
            .ttl_seconds(60)
            .label("cart", "c-9");
        let request = v1::AllocateRequest::from(allocate.clone());
        assert_eq!((request.order_id.as_str(), request.channel_id.as_str()), ("o-1", "web"));
        let sent = request.destination.as_ref().expect("a destination");
        assert_eq!((sent.country.as_str(), sent.region.as_str()), ("US", "US-CA"));
        assert_eq!(request.lines[1], v1::OrderLine { sku: "mug".into(), quantity: 1 });
        assert_eq!(request.policy(), v1::RoutingPolicy::Nearest);
        assert_eq!(request.fill(), v1::FillRule::Partial);
        assert_eq!((request.max_shipments, request.ttl_seconds), (2, 60));
        assert_eq!(request.allow_split, None, "split allowed is left unset, as the default");
        assert!(!request.dry_run);
        let labels = &request.metadata.as_ref().expect("metadata").labels;
        assert_eq!(labels.get("cart").map(String::as_str), Some("c-9"));

        let single = v1::AllocateRequest::from(allocate.no_split().dry_run());
        assert_eq!((single.allow_split, single.dry_run), (Some(false), true));

        let defaults = v1::AllocateRequest::from(
            Allocate::new("o-2", "web", Destination::new("US", 0.0, 0.0))
                .policy(RoutingPolicy::LowestCost)
                .fill(FillRule::AllOrNothing),
        );
        assert_eq!(
            (defaults.policy, defaults.fill, defaults.allow_split),
            (0, 0, None),
            "the server's defaults go out unset, as from a caller that leaves them out"
        );
    }

    #[test]
    fn a_reply_needs_a_plan_and_a_reservation_unless_dry() {
        let plan = v1::RoutingPlan {
            shipments: vec![v1::PlannedShipment {
                location_id: "dc-1".into(),
                distance_km: 12.5,
                cost: 600,
                lines: vec![v1::OrderLine { sku: "tee".into(), quantity: 2 }],
                units: 2,
                orders_left: None,
                units_left: Some(8),
            }],
            cost: 600,
            units: 2,
            ..Default::default()
        };
        let dry = v1::AllocateResponse {
            plan: Some(plan.clone()),
            dry_run: true,
            excluded: vec![v1::ExcludedLocation {
                location_id: "berlin".into(),
                reason: "DOES_NOT_SHIP_THERE".into(),
            }],
            ..Default::default()
        };
        let answer = Allocation::from_reply(dry).expect("a dry run");
        assert!(answer.dry_run && answer.reservation.is_none());
        let shipment = &answer.plan.shipments[0];
        assert_eq!((shipment.location_id.as_str(), shipment.units_left), ("dc-1", Some(8)));
        assert_eq!(shipment.lines, [OrderLine { sku: "tee".into(), quantity: 2 }]);
        assert_eq!(answer.excluded[0].reason, "DOES_NOT_SHIP_THERE");

        let held = v1::AllocateResponse {
            plan: Some(plan.clone()),
            reservation: Some(v1::Reservation {
                reservation_id: "o-1".into(),
                ..Default::default()
            }),
            replayed: true,
            epoch: 3,
            ..Default::default()
        };
        let answer = Allocation::from_reply(held).expect("held");
        let reservation = answer.reservation.expect("a reservation");
        assert_eq!((reservation.reservation_id.as_str(), reservation.epoch), ("o-1", 3));
        assert!(answer.replayed);

        let no_plan = v1::AllocateResponse { dry_run: true, ..Default::default() };
        assert!(matches!(Allocation::from_reply(no_plan), Err(Error::Other { .. })));
        let unheld = v1::AllocateResponse { plan: Some(plan), ..Default::default() };
        assert!(matches!(Allocation::from_reply(unheld), Err(Error::Other { .. })));
    }
}
