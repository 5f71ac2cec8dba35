//! Command-line arguments: one subcommand per RPC, plus `config apply` and `import`.
//!
//! Numeric options accept negative values: the server owns the rules, and its
//! field violation says what is allowed better than clap's "unexpected argument".

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::line::{BatchItem, LineSpec, OrderLineSpec};

/// Where `atpd` listens by default.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

const GLOBAL: &str = "Global options";

const EXAMPLES: &str = "\
Examples:
  atpctl config apply atp.toml
  atpctl import stock.csv
  atpctl availability sku-1 sku-2 --channel web
  atpctl reserve --id order-17 --channel web --line sku-1@dc-east=2 --ttl 900
  atpctl modify order-17 --request-id order-17-change-1 --line sku-1@dc-east=3
  atpctl commit --id order-17
  atpctl allocate order-18 --channel web --to-country US --to-region US-CA \
      --lat 37.77 --lon -122.42 --line sku-1=2 --line sku-2=1 --dry-run
  atpctl event received --id grn-5 --sku sku-1 --location dc-east --quantity 40
  atpctl --json ledger sku-1 --limit 20";

/// The `config apply` file format, shown by `atpctl config apply --help`.
const CONFIG_FORMAT: &str = concat!(
    "File format (TOML; locations are applied before channels; an upsert replaces \
     the whole item, so a key left out takes its default):\n\n",
    include_str!("../config.example.toml")
);

/// Operator CLI for atp, the available-to-promise service.
///
/// Every subcommand makes one gRPC call (`config apply`, `import` and
/// `reservations list --all` make several) and prints the answer as a table, or
/// as JSON with --json. On an error it prints the gRPC code, the message and any
/// field violations, and exits with a status that says the class of error.
#[derive(Debug, Parser)]
#[command(name = "atpctl", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    /// Address of an atpd node (`http://host:port`; `host:port` means http).
    #[arg(long, global = true, env = "ATP_ADDR", default_value = DEFAULT_ADDR, help_heading = GLOBAL)]
    pub addr: String,

    /// Print the response as JSON instead of a table.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// Give up on each call after this many seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS", help_heading = GLOBAL)]
    pub timeout_seconds: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold units for a checkout: every line or none (idempotent by --id).
    Reserve(ReserveArgs),
    /// Many independent Reserves in one ReserveBatch call, each with its own result.
    ReserveBatch(ReserveBatchArgs),
    /// Turn a HELD reservation into an order; lines not named commit all they hold.
    Commit(CommitArgs),
    /// Free a HELD reservation.
    Release(IdArgs),
    /// Free the unshipped units of a COMMITTED reservation.
    Cancel(IdArgs),
    /// Move a HELD reservation's expiry to now + --ttl.
    Extend(ExtendArgs),
    /// Change a HELD reservation's lines to exactly the --line given, all or
    /// nothing (idempotent by --request-id).
    Modify(ModifyArgs),
    /// Choose the locations that ship an order and hold their stock as a
    /// reservation under the order id (idempotent by ORDER_ID and the whole
    /// request); --dry-run only plans and explains.
    Allocate(AllocateArgs),
    /// Show one reservation.
    #[command(visible_alias = "reservation")]
    GetReservation(IdArgs),
    /// Show many reservations by id, or list those matching a filter.
    #[command(subcommand)]
    Reservations(ReservationsCommand),
    /// Availability of SKUs per location and per channel.
    Availability(AvailabilityArgs),
    /// A SKU's observed demand per channel and days of cover per location.
    #[command(after_long_help = crate::commands::demand::DEMAND_HELP)]
    Demand(crate::commands::demand::DemandArgs),
    /// Send one stock event (a physical fact from ERP/WMS).
    #[command(subcommand, visible_alias = "events")]
    Event(EventCommand),
    /// Configure or list locations.
    #[command(subcommand)]
    Location(LocationCommand),
    /// Configure or list channels.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Define or list kits (a SKU sold as a bundle of components).
    #[command(subcommand)]
    Kit(KitCommand),
    /// Apply a declarative TOML file of locations and channels.
    #[command(subcommand)]
    Config(ConfigCommand),
    // Help given as attributes where the text has brackets that rustdoc would read as links.
    #[command(
        about = "Load initial stock from a CSV of counts: event_id,sku,location_id,on_hand[,as_of_ms]"
    )]
    Import(ImportArgs),
    /// List the node's shards.
    Shards(ShardsArgs),
    /// Show one shard, by number or by a SKU it holds; or `shard reassign`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Shard(ShardArgs),
    /// Show durable ledger entries by SKU, location or cause, oldest first, paged.
    Ledger(LedgerArgs),
    /// The cluster as the node asked sees it (members, shard map).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Cluster mode: act on one node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The `atp-publish` process: its channels' status, republish.
    #[command(subcommand)]
    Publish(crate::commands::publish::PublishCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move every shard the node serves to the other live nodes while
    /// serving (planned handoffs); what could not move is listed.
    Drain(DrainArgs),
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node to drain (its node id).
    #[arg(value_name = "NODE_ID")]
    pub node: String,
    /// Moves at once (1..=16; default 4).
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the members: id, address, lease state.
    Members,
    /// List every shard's owner, epoch and the asked node's view of it.
    Shards(ClusterShardsArgs),
}

#[derive(Debug, Args)]
pub struct ClusterShardsArgs {
    /// Only the shards this node id owns.
    #[arg(long, value_name = "NODE_ID")]
    pub node: Option<String>,
}

/// The id a command is about (reservation, event, location or channel), the
/// same way in every command: `atpctl commit r-1` or `atpctl commit --id r-1`.
#[derive(Debug, Args)]
pub struct MainId {
    /// The id (or give it as --id ID).
    #[arg(value_name = "ID", required_unless_present = "id", conflicts_with = "id")]
    positional: Option<String>,
    /// The id, as an option.
    #[arg(long = "id", value_name = "ID")]
    id: Option<String>,
}

impl std::ops::Deref for MainId {
    type Target = String;

    fn deref(&self) -> &String {
        self.positional.as_ref().or(self.id.as_ref()).expect("clap requires ID or --id")
    }
}

impl From<&str> for MainId {
    fn from(id: &str) -> Self {
        Self { positional: Some(id.to_owned()), id: None }
    }
}

impl std::fmt::Display for MainId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self)
    }
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub id: MainId,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub id: MainId,
    /// Channel whose rules the hold must respect.
    #[arg(long)]
    pub channel: String,
    /// A line as SKU@LOCATION=QUANTITY; repeat for more lines.
    #[arg(long = "line", required = true, value_name = "SKU@LOC=QTY")]
    pub lines: Vec<LineSpec>,
    /// Hold lifetime in seconds (default: the server's).
    #[arg(long = "ttl", value_name = "SECONDS")]
    pub ttl_seconds: Option<u32>,
    /// The caller's order (or cart) id, kept with the reservation.
    #[arg(long)]
    pub order_id: Option<String>,
    /// A label kept with the reservation, KEY=VALUE; repeat for more (at most 8).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ReserveBatchArgs {
    /// Channel whose rules every hold must respect.
    #[arg(long)]
    pub channel: String,
    /// Hold lifetime in seconds (default: the server's).
    #[arg(long = "ttl", value_name = "SECONDS")]
    pub ttl_seconds: Option<u32>,
    /// A reservation as `ID:SKU@LOC=QTY[,SKU@LOC=QTY…]` (the id ends at the first `:`,
    /// lines are split at `,`); 1..=1000 of them.
    #[arg(required = true, value_name = "ID:SKU@LOC=QTY,…")]
    pub reservations: Vec<BatchItem>,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[command(flatten)]
    pub id: MainId,
    /// Units to commit of one line, SKU@LOCATION=QUANTITY (0..=held); repeatable.
    #[arg(long = "line", value_name = "SKU@LOC=QTY")]
    pub lines: Vec<LineSpec>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub id: MainId,
    /// New lifetime from now, in seconds.
    #[arg(long = "ttl", value_name = "SECONDS")]
    pub ttl_seconds: u32,
}

#[derive(Debug, Args)]
pub struct ModifyArgs {
    #[command(flatten)]
    pub id: MainId,
    /// Key of this change, chosen by the caller: the same key and lines again
    /// get the first answer (replayed), the same key with other lines is
    /// refused. Required, so that running the command again is a safe retry.
    /// The reservation remembers the keys of its latest 8 changes; an older
    /// key is a new change.
    #[arg(long, value_name = "KEY", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub request_id: String,
    /// A line the reservation should hold afterwards, SKU@LOCATION=QUANTITY;
    /// repeat for more. Lines not given are dropped.
    #[arg(long = "line", required = true, value_name = "SKU@LOC=QTY")]
    pub lines: Vec<LineSpec>,
}

#[derive(Debug, Args)]
pub struct AllocateArgs {
    /// The order id: the idempotency key and the id of the reservation made
    /// (or give it as --id ORDER_ID).
    #[arg(value_name = "ORDER_ID", required_unless_present = "id", conflicts_with = "id")]
    pub order_id: Option<String>,
    /// The order id, as an option.
    #[arg(long = "id", value_name = "ORDER_ID")]
    pub id: Option<String>,
    /// Channel whose locations, buffer and cap bind the order.
    #[arg(long)]
    pub channel: String,
    /// Destination country, ISO 3166-1 alpha-2 (US).
    #[arg(long, value_name = "COUNTRY")]
    pub to_country: String,
    /// Destination region, ISO 3166-2 (US-CA).
    #[arg(long, value_name = "REGION")]
    pub to_region: Option<String>,
    /// Destination latitude in degrees.
    #[arg(long = "lat", value_name = "DEGREES", allow_negative_numbers = true)]
    pub latitude: f64,
    /// Destination longitude in degrees.
    #[arg(long = "lon", value_name = "DEGREES", allow_negative_numbers = true)]
    pub longitude: f64,
    /// An order line as SKU=QUANTITY; repeat for more (the server picks the locations).
    #[arg(long = "line", required = true, value_name = "SKU=QTY")]
    pub lines: Vec<OrderLineSpec>,
    /// What the plan is chosen for.
    #[arg(long, value_enum, default_value = "lowest-cost")]
    pub policy: PolicyArg,
    /// Most shipments (1..=10; default: the server's, 4).
    #[arg(long, value_name = "N")]
    pub max_shipments: Option<u32>,
    /// One shipment only.
    #[arg(long)]
    pub no_split: bool,
    /// Hold what can be held and report the rest as backordered (default: all or nothing).
    #[arg(long)]
    pub partial: bool,
    /// Hold lifetime in seconds (default: the server's).
    #[arg(long = "ttl", value_name = "SECONDS")]
    pub ttl_seconds: Option<u32>,
    /// Minor currency units added per shipment beyond the first.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub split_penalty: Option<i64>,
    /// Most plans the planner evaluates (default: the server's, 20000).
    #[arg(long, value_name = "N")]
    pub work_budget: Option<u32>,
    /// Plan and explain without holding anything.
    #[arg(long)]
    pub dry_run: bool,
}

impl AllocateArgs {
    /// The order id, given as the argument or with --id.
    pub fn order_id(&self) -> &str {
        self.order_id.as_ref().or(self.id.as_ref()).expect("clap requires ORDER_ID or --id")
    }
}

/// What `allocate` chooses its plan for, as `--policy` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Least total cost (shipments' costs plus the split penalty).
    LowestCost,
    /// Smallest largest shipment distance, then smallest sum of distances.
    Nearest,
    /// Fewest shipments, then least cost.
    FewestShipments,
}

impl From<PolicyArg> for atp_client::RoutingPolicy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::LowestCost => Self::LowestCost,
            PolicyArg::Nearest => Self::Nearest,
            PolicyArg::FewestShipments => Self::FewestShipments,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ReservationsCommand {
    /// Show 1..=100 reservations by id (GetReservations), one result per id.
    Get(ReservationsGetArgs),
    /// List reservations matching every filter given, page by page (ListReservations).
    List(ReservationsListArgs),
}

#[derive(Debug, Args)]
pub struct ReservationsGetArgs {
    /// Reservation ids (1..=100; an id may repeat).
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReservationsListArgs {
    /// Only reservations with a line of this SKU.
    #[arg(long)]
    pub sku: Option<String>,
    /// Only reservations with a line at this location.
    #[arg(long)]
    pub location: Option<String>,
    /// Only reservations of this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only reservations in this state; repeat for any of several.
    #[arg(long = "state", value_enum, value_name = "STATE")]
    pub states: Vec<ReservationStateArg>,
    /// Only reservations whose metadata has this order id.
    #[arg(long)]
    pub order_id: Option<String>,
    /// Only reservations with this label, KEY=VALUE; repeat for more (all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Reservations per page (server default 100, at most 1000).
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Continue after a previous page (its `next page` token).
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow the page tokens to the end of the scan and print every page as one.
    #[arg(long)]
    pub all: bool,
}

/// A reservation state, as `--state` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReservationStateArg {
    Held,
    Committed,
    Released,
    Expired,
    Cancelled,
    Fulfilled,
}

impl From<ReservationStateArg> for atp_proto::v1::ReservationState {
    fn from(state: ReservationStateArg) -> Self {
        match state {
            ReservationStateArg::Held => Self::Held,
            ReservationStateArg::Committed => Self::Committed,
            ReservationStateArg::Released => Self::Released,
            ReservationStateArg::Expired => Self::Expired,
            ReservationStateArg::Cancelled => Self::Cancelled,
            ReservationStateArg::Fulfilled => Self::Fulfilled,
        }
    }
}

/// `KEY=VALUE` (split at the first `=`; the key must not be empty).
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct AvailabilityArgs {
    /// SKUs to show.
    #[arg(required = true, value_name = "SKU")]
    pub skus: Vec<String>,
    /// Only these locations (default: every location with a position).
    #[arg(long = "location", value_name = "LOCATION")]
    pub locations: Vec<String>,
    /// Only these channels (default: every channel).
    #[arg(long = "channel", value_name = "CHANNEL")]
    pub channels: Vec<String>,
}

/// The (event, sku, location) every stock event names.
#[derive(Debug, Args)]
pub struct EventTarget {
    #[command(flatten)]
    pub id: MainId,
    /// The SKU whose position changes.
    #[arg(long)]
    pub sku: String,
    /// The location whose position changes.
    #[arg(long)]
    pub location: String,
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Units arrived (on_hand += quantity).
    Received {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
    },
    /// Units left the building (on_hand -= quantity; also committed with --reservation).
    Shipped {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
        /// The committed reservation this shipment fulfils.
        #[arg(long)]
        reservation: Option<String>,
    },
    /// A count: on_hand as of a time; movements applied after it are added back.
    Counted {
        #[command(flatten)]
        target: EventTarget,
        /// Units counted on hand.
        #[arg(long, allow_negative_numbers = true)]
        on_hand: i64,
        /// When the count was taken, ms since the Unix epoch (default: now, as
        /// the node applies it; repeating the command is then a DUPLICATE).
        #[arg(long, allow_negative_numbers = true)]
        as_of_ms: Option<i64>,
    },
    /// A correction of on_hand by a signed delta.
    Adjusted {
        #[command(flatten)]
        target: EventTarget,
        /// Signed change of on_hand.
        #[arg(long, allow_negative_numbers = true)]
        delta: i64,
        /// Why, in a few words.
        #[arg(long)]
        reason: String,
    },
    /// Units damaged, on quality hold or quarantined.
    Unavailable {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
        /// Why, in a few words.
        #[arg(long)]
        reason: String,
    },
    /// Units back from unavailable.
    ReleaseUnavailable {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
    },
    /// Units expected (in transit or on order).
    Incoming {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
        /// Expected arrival, ms since the Unix epoch.
        #[arg(long, allow_negative_numbers = true)]
        expected_at_ms: i64,
    },
    /// Expected units arrived (incoming -> on_hand).
    IncomingReceived {
        #[command(flatten)]
        target: EventTarget,
        /// Units (positive).
        #[arg(long, allow_negative_numbers = true)]
        quantity: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocationCommand {
    /// Create or replace a location (fields not given are reset to their defaults).
    Upsert(Box<LocationUpsertArgs>),
    /// List configured locations.
    List,
}

/// What sort of building a location is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LocationKindArg {
    Warehouse,
    Store,
    #[value(name = "3pl", alias = "third-party")]
    ThirdParty,
}

/// Where a location or channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Takes holds and counts in ATP.
    Active,
    /// Takes no new hold and shows ATP 0; existing holds go on.
    Paused,
    /// Like paused, for good: it can never become active again.
    Retired,
}

impl From<StateArg> for atp_proto::v1::LifecycleState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Active => Self::Active,
            StateArg::Paused => Self::Paused,
            StateArg::Retired => Self::Retired,
        }
    }
}

#[derive(Debug, Args)]
pub struct LocationUpsertArgs {
    #[command(flatten)]
    pub id: MainId,
    #[arg(long, value_enum)]
    pub kind: LocationKindArg,
    #[arg(long, default_value = "")]
    pub name: String,
    /// Latitude in degrees (with --lon).
    #[arg(long = "lat", requires = "longitude", allow_negative_numbers = true)]
    pub latitude: Option<f64>,
    /// Longitude in degrees (with --lat).
    #[arg(long = "lon", requires = "latitude", allow_negative_numbers = true)]
    pub longitude: Option<f64>,
    /// Units never promised at this location, per SKU.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub safety_stock: i64,
    /// Shipments per day (0 = unlimited).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub daily_capacity: i64,
    /// Cost units per shipment.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub shipping_cost: f64,
    /// Lifecycle state.
    #[arg(long, value_enum, default_value = "active")]
    pub state: StateArg,
    /// Same as --state paused (older spelling).
    #[arg(long, conflicts_with = "state")]
    pub inactive: bool,
    /// Countries (US) and regions (US-CA) it ships to, comma-separated
    /// (none: anywhere).
    #[arg(long, value_delimiter = ',')]
    pub ships_to: Vec<String>,
    /// Cost of a shipment, in minor currency units (cents).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub cost_per_shipment: i64,
    /// Cost per km to the destination, in minor units.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub cost_per_km: i64,
    /// Cost per unit shipped, in minor units.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub cost_per_unit: i64,
    /// IANA time zone of the location's day, e.g. Europe/Berlin (empty: UTC).
    #[arg(long, default_value = "")]
    pub time_zone: String,
    /// Units per day the location can ship (0 = unlimited).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub daily_unit_capacity: i64,
    /// Among otherwise equal plans, the lower number ships first.
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
}

impl LocationUpsertArgs {
    /// The state asked for: --state, or paused for --inactive.
    pub fn state(&self) -> atp_proto::v1::LifecycleState {
        if self.inactive { StateArg::Paused.into() } else { self.state.into() }
    }
}

#[derive(Debug, Subcommand)]
pub enum KitCommand {
    /// Define or replace a kit: `atpctl kit upsert box --component mug=1 --component tea=3`.
    Upsert(KitUpsertArgs),
    /// List the kits.
    List,
}

#[derive(Debug, Args)]
pub struct KitUpsertArgs {
    /// The kit's SKU.
    #[command(flatten)]
    pub id: MainId,
    #[arg(long, default_value = "")]
    pub name: String,
    /// A component as SKU=UNITS_PER_KIT; repeat for more (1..=32).
    #[arg(long = "component", required = true, value_name = "SKU=QTY")]
    pub components: Vec<crate::line::OrderLineSpec>,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Create or replace a channel (fields not given are reset to their defaults).
    Upsert(ChannelUpsertArgs),
    /// List configured channels.
    List,
}

#[derive(Debug, Args)]
pub struct ChannelUpsertArgs {
    #[command(flatten)]
    pub id: MainId,
    #[arg(long, default_value = "")]
    pub name: String,
    /// A location feeding the channel; repeat for more.
    #[arg(long = "location", required = true, value_name = "LOCATION")]
    pub locations: Vec<String>,
    /// Units withheld from the channel's total.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub buffer: i64,
    /// Most units ever published to the channel (default: no cap).
    #[arg(long, allow_negative_numbers = true)]
    pub cap: Option<i64>,
    /// Lifecycle state.
    #[arg(long, value_enum, default_value = "active")]
    pub state: StateArg,
    /// How late the channel applies an update, in ms (0..=86400000): the
    /// published figure holds back the demand expected meanwhile.
    #[arg(long, default_value_t = 0)]
    pub publish_lag_ms: i64,
    /// The published figure's safety level, per mille (0..=999; default
    /// 950 on the server).
    #[arg(long)]
    pub safety_level: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    #[command(
        about = "Upsert every [[location]] then every [[channel]] of FILE; prints what changed",
        after_long_help = CONFIG_FORMAT
    )]
    Apply {
        /// The TOML file (format: see --help).
        file: PathBuf,
    },
    /// Check FILE (every problem at once) and print what it declares; channels
    /// naming a location neither the file nor the node has are flagged.
    #[command(after_long_help = CONFIG_FORMAT)]
    Check {
        /// The TOML file (format: see --help).
        file: PathBuf,
        /// Check the file alone, without asking the node for its locations.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[arg(help = "CSV with header event_id,sku,location_id,on_hand[,as_of_ms]")]
    pub file: PathBuf,
    /// The as_of_ms of rows that give none (default: now). Counts are idempotent by
    /// event id and payload, so to run an import again give the value it printed.
    #[arg(long, allow_negative_numbers = true, value_name = "MS")]
    pub as_of_ms: Option<i64>,
}

#[derive(Debug, Args)]
pub struct ShardsArgs {
    /// Also list shards that hold nothing.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ShardArgs {
    /// Shard number.
    #[arg(value_name = "SHARD_NUMBER")]
    pub shard: Option<u32>,
    /// The shard that holds this SKU.
    #[arg(long)]
    pub sku: Option<String>,
    #[command(subcommand)]
    pub command: Option<ShardCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Cluster mode: move a dead node's shards (or one of them) to live
    /// nodes, losing what only that node held. Needs --accept-loss.
    #[command(after_help = REASSIGN_HELP)]
    Reassign(ReassignArgs),
    /// Cluster mode: move one live shard to another live node while
    /// serving (a planned handoff; its requests wait, none fail).
    Move(MoveArgs),
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The shard to move (0..1023).
    #[arg(value_name = "SHARD")]
    pub shard: u32,
    /// The live member to move it to (its node id).
    #[arg(long, value_name = "NODE_ID")]
    pub to: String,
}

const REASSIGN_HELP: &str = "\
A dead node's shards wait for it to come back on its data directory. When it
will not, this moves them to the live nodes: their stock, holds and
reservations on the dead node's disk are lost to the cluster (the new owners
start them empty). The node must have been seen down by the coordinator for
the asked node's reassign_grace_ms. The change and an audit entry are written
to etcd in one transaction; the new owners claim the shards under new epochs.";

#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// Move this one shard (its assigned node must be dead).
    #[arg(long, value_name = "N", required_unless_present = "node", conflicts_with = "node")]
    pub shard: Option<u32>,
    /// Move every shard of this dead node.
    #[arg(long, value_name = "NODE_ID")]
    pub node: Option<String>,
    /// Accept that what only the dead node held is lost (required).
    #[arg(long)]
    pub accept_loss: bool,
    /// Who asks, for the audit entry (default: $USER@hostname).
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Only this SKU (one of SKU, --location or --cause is required).
    pub sku: Option<String>,
    /// Only this location.
    #[arg(long)]
    pub location: Option<String>,
    /// Only changes caused by this reservation or stock event id.
    #[arg(long)]
    pub cause: Option<String>,
    /// Only entries at or after this time (ms since the Unix epoch).
    #[arg(long)]
    pub from_ms: Option<i64>,
    /// Only entries before this time (ms since the Unix epoch).
    #[arg(long)]
    pub to_ms: Option<i64>,
    /// Entries per page, oldest first (server default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue after a previous page (its `next page` token).
    #[arg(long)]
    pub page_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reserve_takes_repeated_lines() {
        let cli = Cli::try_parse_from([
            "atpctl",
            "reserve",
            "--id",
            "r1",
            "--channel",
            "web",
            "--line",
            "a@dc=1",
            "--line",
            "b@dc=2",
            "--ttl",
            "60",
        ])
        .expect("valid command line");
        let Command::Reserve(args) = cli.command else { panic!("not reserve") };
        assert_eq!(args.lines.len(), 2);
        assert_eq!(args.ttl_seconds, Some(60));
    }

    #[test]
    fn modify_needs_a_request_id_and_a_line() {
        let cli = Cli::try_parse_from([
            "atpctl",
            "modify",
            "r1",
            "--request-id",
            "k1",
            "--line",
            "a@dc=1",
            "--line",
            "b@dc=2",
        ])
        .expect("valid command line");
        let Command::Modify(args) = cli.command else { panic!("not modify") };
        assert_eq!((args.id.as_str(), args.request_id.as_str()), ("r1", "k1"));
        assert_eq!(args.lines.len(), 2);
        let no_key = Cli::try_parse_from(["atpctl", "modify", "r1", "--line", "a@dc=1"]);
        assert!(no_key.is_err(), "no request id");
        let no_line = Cli::try_parse_from(["atpctl", "modify", "r1", "--request-id", "k1"]);
        assert!(no_line.is_err(), "no line");
    }

    #[test]
    fn allocate_takes_an_order_and_its_options() {
        let cli = Cli::try_parse_from([
            "atpctl",
            "allocate",
            "o-1",
            "--channel",
            "web",
            "--to-country",
            "US",
            "--to-region",
            "US-CA",
            "--lat",
            "37.7",
            "--lon",
            "-122.4",
            "--line",
            "tee=2",
            "--line",
            "mug=1",
            "--policy",
            "fewest-shipments",
            "--no-split",
            "--partial",
            "--dry-run",
        ])
        .expect("valid command line");
        let Command::Allocate(args) = cli.command else { panic!("not allocate") };
        assert_eq!((args.order_id(), args.longitude), ("o-1", -122.4));
        assert_eq!(args.lines.len(), 2);
        assert_eq!(args.policy, PolicyArg::FewestShipments);
        assert!(args.no_split && args.partial && args.dry_run);
        let with_id = Cli::try_parse_from([
            "atpctl",
            "allocate",
            "--id",
            "o-2",
            "--channel",
            "web",
            "--to-country",
            "US",
            "--lat",
            "0",
            "--lon",
            "0",
            "--line",
            "tee=1",
        ])
        .expect("--id works too");
        let Command::Allocate(args) = with_id.command else { panic!("not allocate") };
        assert_eq!((args.order_id(), args.policy), ("o-2", PolicyArg::LowestCost));
        let no_line = Cli::try_parse_from([
            "atpctl",
            "allocate",
            "o-3",
            "--channel",
            "web",
            "--to-country",
            "US",
            "--lat",
            "0",
            "--lon",
            "0",
        ]);
        assert!(no_line.is_err(), "no line");
    }

    #[test]
    fn adjusted_accepts_a_negative_delta() {
        let cli = Cli::try_parse_from([
            "atpctl",
            "event",
            "adjusted",
            "--id",
            "e",
            "--sku",
            "s",
            "--location",
            "l",
            "--delta",
            "-3",
            "--reason",
            "count",
        ])
        .expect("valid command line");
        let Command::Event(EventCommand::Adjusted { delta, .. }) = cli.command else {
            panic!("not adjusted")
        };
        assert_eq!(delta, -3);
    }

    #[test]
    fn reservations_list_takes_repeated_states_and_labels() {
        let cli = Cli::try_parse_from([
            "atpctl",
            "reservations",
            "list",
            "--state",
            "held",
            "--state",
            "committed",
            "--label",
            "cart=c=1",
            "--page-size",
            "2",
        ])
        .expect("valid command line");
        let Command::Reservations(ReservationsCommand::List(args)) = cli.command else {
            panic!("not reservations list")
        };
        assert_eq!(args.states, [ReservationStateArg::Held, ReservationStateArg::Committed]);
        assert_eq!(args.labels, [("cart".to_owned(), "c=1".to_owned())]);
        assert_eq!(args.page_size, Some(2));
        for bad in ["nolabel", "=value"] {
            let parsed = Cli::try_parse_from(["atpctl", "reservations", "list", "--label", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["atpctl", "reservations", "get"]).is_err(), "no id");
    }

    #[test]
    fn shard_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["atpctl", "shard"]).is_err());
        assert!(Cli::try_parse_from(["atpctl", "shard", "3", "--sku", "x"]).is_err());
        assert!(Cli::try_parse_from(["atpctl", "shard", "--sku", "x"]).is_ok());
        assert!(Cli::try_parse_from(["atpctl", "shard", "17"]).is_ok());
    }

    #[test]
    fn shard_reassign_is_a_subcommand_that_needs_one_target() {
        let parsed = |args: &[&str]| {
            let mut full = vec!["atpctl", "shard"];
            full.extend(args);
            Cli::try_parse_from(full)
        };
        let cli = parsed(&["reassign", "--node", "n-2", "--accept-loss"]).expect("valid");
        let Command::Shard(ShardArgs { command: Some(ShardCommand::Reassign(args)), .. }) =
            cli.command
        else {
            panic!("not a reassign: {:?}", cli.command)
        };
        assert_eq!((args.node.as_deref(), args.shard, args.accept_loss), (Some("n-2"), None, true));
        assert!(parsed(&["reassign", "--shard", "3"]).is_ok(), "refused later, with a reason");
        assert!(parsed(&["reassign"]).is_err(), "a target is required");
        assert!(parsed(&["reassign", "--shard", "3", "--node", "n"]).is_err());
        assert!(parsed(&["3", "reassign", "--shard", "3"]).is_err());
    }

    #[test]
    fn location_kind_3pl_and_lat_lon_pair() {
        let ok = Cli::try_parse_from([
            "atpctl", "location", "upsert", "--id", "x", "--kind", "3pl", "--lat", "-33.9",
            "--lon", "18.4",
        ]);
        assert!(ok.is_ok());
        let lat_only = Cli::try_parse_from([
            "atpctl", "location", "upsert", "--id", "x", "--kind", "store", "--lat", "1",
        ]);
        assert!(lat_only.is_err());
    }
}
