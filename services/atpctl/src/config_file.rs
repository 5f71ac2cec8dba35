//! The declarative configuration file of `atpctl config apply`.
//!
//! A TOML file with any number of `[[location]]` and `[[channel]]` tables.
//! `config apply` upserts every location first, then every channel (a channel
//! may only name locations that exist), and prints for each item whether the
//! server's copy changed. Applying the same file twice changes nothing. An
//! upsert replaces the whole item, so a key left out takes its default.
//!
//! ```toml
//! [[location]]
//! id = "dc-east"            # required
//! kind = "warehouse"        # required: "warehouse", "store" or "3pl"
//! name = "East DC"          # default ""
//! latitude = 40.71          # degrees; give both or neither (default 0, 0)
//! longitude = -74.01
//! safety_stock = 2          # units never promised, per SKU (default 0)
//! daily_capacity = 5000     # shipments per day, 0 = unlimited (default 0)
//! shipping_cost = 4.5       # cost units per shipment (default 0)
//! state = "active"          # "active", "paused" or "retired" (default "active")
//! active = true             # older spelling: false means state = "paused"
//!
//! [[channel]]
//! id = "web"                # required
//! name = "Web store"        # default ""
//! locations = ["dc-east"]   # required: the locations feeding the channel
//! buffer = 5                # units withheld from the channel (default 0)
//! cap = 100                 # most units ever published (default: no cap)
//! state = "active"          # "active", "paused" or "retired" (default "active")
//! publish_lag_ms = 60000    # how late the channel applies an update (default 0)
//! safety_level = 950        # per mille, 0..=999, for the published figure (default 950)
//! ```
//!
//! Unknown keys are errors, and every error names the item (`location
//! "dc-east"`, or `location #3` when the id itself is missing) and the field.
//! The whole file is checked before anything is sent, and every problem is
//! reported at once: every bad field of every item, not only an item's first.
//! `services/atpctl/config.example.toml` is a complete example (shown by
//! `atpctl config apply --help`).

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, anyhow, bail};
use atp_core::CoreError;
use atp_core::catalog::{self, MAX_CHANNELS, MAX_LOCATIONS};
use atp_core::ids::{LocationId, validate_id};
use atp_proto::v1::{Channel, Location, LocationKind, ShippingCost};
use serde::Deserialize;

/// Everything a configuration file declares, checked.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFile {
    pub locations: Vec<LocationEntry>,
    pub channels: Vec<ChannelEntry>,
}

/// How a `[[location]]` spells the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KindEntry {
    Warehouse,
    Store,
    #[serde(rename = "3pl", alias = "third-party")]
    ThirdParty,
}

/// One `[[location]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationEntry {
    pub id: String,
    pub kind: KindEntry,
    #[serde(default)]
    pub name: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    #[serde(default)]
    pub safety_stock: i64,
    #[serde(default)]
    pub daily_capacity: i64,
    #[serde(default)]
    pub shipping_cost: f64,
    #[serde(default = "active_by_default")]
    pub active: bool,
    /// Wins over `active` when given.
    pub state: Option<StateEntry>,
    #[serde(default)]
    pub ships_to: Vec<String>,
    #[serde(default)]
    pub cost_per_shipment: i64,
    #[serde(default)]
    pub cost_per_km: i64,
    #[serde(default)]
    pub cost_per_unit: i64,
    #[serde(default)]
    pub time_zone: String,
    #[serde(default)]
    pub daily_unit_capacity: i64,
    #[serde(default)]
    pub priority: u32,
}

fn active_by_default() -> bool {
    true
}

/// A lifecycle state as the file spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateEntry {
    Active,
    Paused,
    Retired,
}

impl StateEntry {
    fn domain(self) -> catalog::Lifecycle {
        match self {
            StateEntry::Active => catalog::Lifecycle::Active,
            StateEntry::Paused => catalog::Lifecycle::Paused,
            StateEntry::Retired => catalog::Lifecycle::Retired,
        }
    }

    fn proto(self) -> i32 {
        atp_proto::v1::LifecycleState::from(self.domain()).into()
    }
}

impl LocationEntry {
    fn state(&self) -> StateEntry {
        self.state.unwrap_or(if self.active { StateEntry::Active } else { StateEntry::Paused })
    }
}

/// One `[[channel]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub locations: Vec<String>,
    #[serde(default)]
    pub buffer: i64,
    pub cap: Option<i64>,
    pub state: Option<StateEntry>,
    #[serde(default)]
    pub publish_lag_ms: i64,
    pub safety_level: Option<u32>,
}

impl ConfigFile {
    /// Reads and checks a whole file; nothing is applied when any item is
    /// bad. Every problem is reported (one per line), not only the first.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let document: toml::Table = toml::from_str(text)
            .map_err(|error| anyhow!("{}", error.to_string().trim_end()))
            .context("invalid TOML")?;
        let mut file = ConfigFile::default();
        let mut problems = Vec::new();
        for (key, value) in document {
            match key.as_str() {
                "location" => file.locations = parse_items(&key, value, &mut problems),
                "channel" => file.channels = parse_items(&key, value, &mut problems),
                other => problems.push(format!(
                    "unknown top-level key `{other}`: expected [[location]] or [[channel]] tables"
                )),
            }
        }
        if file.locations.is_empty() && file.channels.is_empty() && problems.is_empty() {
            problems.push("the file declares no [[location]] or [[channel]]".to_owned());
        }
        if file.locations.len() > MAX_LOCATIONS {
            problems.push(format!(
                "{} locations; at most {MAX_LOCATIONS} may be configured",
                file.locations.len()
            ));
        }
        if file.channels.len() > MAX_CHANNELS {
            problems.push(format!(
                "{} channels; at most {MAX_CHANNELS} may be configured",
                file.channels.len()
            ));
        }
        refuse(problems)?;
        Ok(file)
    }

    /// The channels' locations that neither the file nor `known` (the
    /// node's locations) has, one problem each.
    pub fn unknown_locations(&self, known: &HashSet<String>) -> Vec<String> {
        let declared: HashSet<&str> =
            self.locations.iter().map(|entry| entry.id.as_str()).collect();
        let mut problems = Vec::new();
        for channel in &self.channels {
            for (index, location) in channel.locations.iter().enumerate() {
                if !declared.contains(location.as_str()) && !known.contains(location) {
                    problems.push(format!(
                        "channel {:?}: locations[{index}]: location {location:?} is neither in the file nor on the node",
                        channel.id
                    ));
                }
            }
        }
        problems
    }
}

/// `Ok` when there is no problem; else one error listing them all.
pub fn refuse(problems: Vec<String>) -> anyhow::Result<()> {
    match problems.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{} problems:\n  {}", many.len(), many.join("\n  ")),
    }
}

/// What `parse_items` needs of a `[[location]]` or `[[channel]]` entry.
trait Item: for<'de> Deserialize<'de> {
    /// The keys an entry must have.
    const REQUIRED: &'static [&'static str];
    /// Every key an entry may have, in the struct's order.
    const KEYS: &'static [&'static str];
    /// A valid value of the required field `key`, to check the other fields
    /// of an entry whose `key` is missing or bad.
    fn stand_in(key: &str) -> toml::Value;
    /// What is wrong with `value` as the field `key` (one of [`Item::KEYS`]),
    /// if anything: serde stops at an entry's first bad field, so each field
    /// is read on its own first and every bad one is reported.
    fn type_problem(key: &str, value: &toml::Value) -> Option<String>;
    fn id(&self) -> &str;
    /// The checks serde cannot express, every one that fails, each naming
    /// its field; they need not name the item.
    fn check(&self) -> Vec<String>;
}

/// What is wrong with `value` as a `T`, if anything.
fn type_problem<T: for<'de> Deserialize<'de>>(value: &toml::Value) -> Option<String> {
    let result: Result<T, toml::de::Error> = value.clone().try_into();
    result.err().map(|error| error.message().trim_end().to_owned())
}

/// Every problem of the table `item`, each naming its field: unknown keys,
/// missing keys and values of the wrong type, then what [`Item::check`] finds
/// in the fields that were read (a bad optional field takes its default for
/// that, and problems naming it are not repeated); `Ok` with the entry when
/// there are none.
fn parse_item<T: Item>(item: &toml::Table) -> Result<T, Vec<String>> {
    let mut problems = Vec::new();
    let mut readable = item.clone();
    let mut unread: Vec<&str> = Vec::new();
    for (key, value) in item {
        let problem = if T::KEYS.contains(&key.as_str()) {
            T::type_problem(key, value).map(|problem| format!("{key}: {problem}"))
        } else {
            let expected: Vec<String> = T::KEYS.iter().map(|key| format!("`{key}`")).collect();
            Some(format!("unknown field `{key}`, expected one of {}", expected.join(", ")))
        };
        if let Some(problem) = problem {
            problems.push(problem);
            readable.remove(key);
            unread.push(key);
        }
    }
    // A required field missing or bad is reported; a stand-in lets the
    // others be checked.
    for key in T::REQUIRED {
        if !item.contains_key(*key) {
            problems.push(format!("missing field `{key}`"));
        }
        if !readable.contains_key(*key) {
            readable.insert((*key).to_owned(), T::stand_in(key));
            unread.push(key);
        }
    }
    let entry: T = match toml::Value::Table(readable).try_into() {
        Ok(entry) => entry,
        Err(error) => {
            let error: toml::de::Error = error;
            problems.push(error.message().trim_end().to_owned());
            return Err(problems);
        }
    };
    let names_unread = |problem: &String| {
        let fields = problem.split_once(": ").map_or("", |(fields, _)| fields);
        fields.split(", ").any(|field| {
            let name = field.split_once('[').map_or(field, |(name, _)| name);
            unread.contains(&name)
        })
    };
    problems.extend(entry.check().into_iter().filter(|problem| !names_unread(problem)));
    if problems.is_empty() { Ok(entry) } else { Err(problems) }
}

/// Reads the array of tables under `key` (`location` or `channel`), checking
/// each item; a problem is added to `problems` and the item left out.
fn parse_items<T: Item>(key: &str, value: toml::Value, problems: &mut Vec<String>) -> Vec<T> {
    match parse_items_checked(key, value, problems) {
        Ok(entries) => entries,
        Err(problem) => {
            problems.push(format!("{problem:#}"));
            Vec::new()
        }
    }
}

/// The items under `key`; an error only when `key` is not an array of tables.
fn parse_items_checked<T: Item>(
    key: &str,
    value: toml::Value,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<T>> {
    let toml::Value::Array(items) = value else {
        bail!("`{key}` must be written as [[{key}]] tables");
    };
    let mut entries: Vec<T> = Vec::with_capacity(items.len());
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let number = index + 1;
        let label = match item.get("id").and_then(toml::Value::as_str) {
            Some(id) => format!("{key} {id:?}"),
            None => format!("{key} #{number}"),
        };
        let Some(table) = item.as_table() else {
            problems.push(format!("{label}: must be a table"));
            continue;
        };
        let entry: T = match parse_item(table) {
            Ok(entry) => entry,
            Err(found) => {
                problems.extend(found.into_iter().map(|problem| format!("{label}: {problem}")));
                continue;
            }
        };
        if let Some(first) = first_seen.insert(entry.id().to_owned(), number) {
            problems.push(format!("{label} is declared twice (#{first} and #{number})"));
            continue;
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl Item for LocationEntry {
    const REQUIRED: &'static [&'static str] = &["id", "kind"];

    fn stand_in(key: &str) -> toml::Value {
        match key {
            "kind" => "warehouse".into(),
            _ => "stand-in".into(),
        }
    }
    const KEYS: &'static [&'static str] = &[
        "id",
        "kind",
        "name",
        "latitude",
        "longitude",
        "safety_stock",
        "daily_capacity",
        "shipping_cost",
        "active",
        "state",
        "ships_to",
        "cost_per_shipment",
        "cost_per_km",
        "cost_per_unit",
        "time_zone",
        "daily_unit_capacity",
        "priority",
    ];

    fn type_problem(key: &str, value: &toml::Value) -> Option<String> {
        match key {
            "id" | "name" => type_problem::<String>(value),
            "kind" => type_problem::<KindEntry>(value),
            "latitude" | "longitude" | "shipping_cost" => type_problem::<f64>(value),
            "safety_stock" | "daily_capacity" | "daily_unit_capacity" => type_problem::<i64>(value),
            "cost_per_shipment" | "cost_per_km" | "cost_per_unit" => type_problem::<i64>(value),
            "ships_to" => type_problem::<Vec<String>>(value),
            "time_zone" => type_problem::<String>(value),
            "priority" => type_problem::<u32>(value),
            "active" => type_problem::<bool>(value),
            "state" => type_problem::<StateEntry>(value),
            _ => None,
        }
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.latitude.is_some() != self.longitude.is_some() {
            problems.push("latitude, longitude: give both, or neither".to_owned());
        }
        // The server applies the same rules; checking here keeps a bad file
        // from half-applying. A bad id is reported, and the other fields are
        // still checked (under a stand-in id: the core's rules for them do
        // not read it).
        let id = LocationId::parse("id", &self.id).unwrap_or_else(|violation| {
            problems.push(format!("{}: {}", violation.field, violation.description));
            LocationId::parse("id", "stand-in").expect("a valid id")
        });
        let location = catalog::Location {
            id,
            kind: match self.kind {
                KindEntry::Warehouse => catalog::LocationKind::Warehouse,
                KindEntry::Store => catalog::LocationKind::Store,
                KindEntry::ThirdParty => catalog::LocationKind::ThirdParty,
            },
            name: self.name.clone(),
            latitude: self.latitude.unwrap_or(0.0),
            longitude: self.longitude.unwrap_or(0.0),
            safety_stock: self.safety_stock,
            daily_capacity: self.daily_capacity,
            shipping_cost: self.shipping_cost,
            state: self.state().domain(),
            fulfilment: catalog::Fulfilment {
                ships_to: self.ships_to.clone(),
                cost: catalog::CostModel {
                    per_shipment: self.cost_per_shipment,
                    per_km: self.cost_per_km,
                    per_unit: self.cost_per_unit,
                },
                time_zone: self.time_zone.clone(),
                daily_units: self.daily_unit_capacity,
                priority: self.priority,
            },
        };
        if let Err(error) = location.validate("location") {
            problems.extend(describe_core_error(error, "location."));
        }
        problems
    }
}

impl LocationEntry {
    pub fn to_proto(&self) -> Location {
        let kind = match self.kind {
            KindEntry::Warehouse => LocationKind::Warehouse,
            KindEntry::Store => LocationKind::Store,
            KindEntry::ThirdParty => LocationKind::ThirdParty,
        };
        Location {
            location_id: self.id.clone(),
            kind: kind as i32,
            name: self.name.clone(),
            latitude: self.latitude.unwrap_or(0.0),
            longitude: self.longitude.unwrap_or(0.0),
            safety_stock: self.safety_stock,
            daily_capacity: self.daily_capacity,
            shipping_cost: self.shipping_cost,
            active: self.state() == StateEntry::Active,
            state: self.state().proto(),
            ships_to: self.ships_to.clone(),
            cost: Some(ShippingCost {
                per_shipment: self.cost_per_shipment,
                per_km: self.cost_per_km,
                per_unit: self.cost_per_unit,
            }),
            time_zone: self.time_zone.clone(),
            daily_unit_capacity: self.daily_unit_capacity,
            priority: self.priority,
        }
    }
}

impl Item for ChannelEntry {
    const REQUIRED: &'static [&'static str] = &["id", "locations"];

    fn stand_in(key: &str) -> toml::Value {
        match key {
            "locations" => toml::Value::Array(Vec::new()),
            _ => "stand-in".into(),
        }
    }
    const KEYS: &'static [&'static str] =
        &["id", "name", "locations", "buffer", "cap", "state", "publish_lag_ms", "safety_level"];

    fn type_problem(key: &str, value: &toml::Value) -> Option<String> {
        match key {
            "id" | "name" => type_problem::<String>(value),
            "locations" => type_problem::<Vec<String>>(value),
            "buffer" | "cap" | "publish_lag_ms" => type_problem::<i64>(value),
            "safety_level" => type_problem::<u32>(value),
            "state" => type_problem::<StateEntry>(value),
            _ => None,
        }
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(id_problem("id", &self.id));
        for (index, location) in self.locations.iter().enumerate() {
            let field = format!("locations[{index}]");
            if let Some(problem) = id_problem(&field, location) {
                problems.push(problem);
            } else if self.locations[..index].contains(location) {
                problems.push(format!("{field}: location {location:?} is listed twice"));
            }
        }
        if self.buffer < 0 {
            problems.push("buffer: must be >= 0".to_owned());
        }
        if self.cap.is_some_and(|cap| cap < 0) {
            problems.push("cap: must be >= 0".to_owned());
        }
        let most_lag = atp_core::publish::MAX_PUBLISH_LAG_MS;
        if !(0..=most_lag).contains(&self.publish_lag_ms) {
            problems.push(format!("publish_lag_ms: must be 0..={most_lag}"));
        }
        let most_level = atp_core::publish::MAX_SAFETY_LEVEL;
        if self.safety_level.is_some_and(|level| level > most_level) {
            problems.push(format!("safety_level: must be 0..={most_level} (per mille)"));
        }
        problems
    }
}

impl ChannelEntry {
    pub fn to_proto(&self) -> Channel {
        Channel {
            channel_id: self.id.clone(),
            name: self.name.clone(),
            location_ids: self.locations.clone(),
            buffer: self.buffer,
            cap: self.cap,
            state: self.state.unwrap_or(StateEntry::Active).proto(),
            publish_lag_ms: self.publish_lag_ms,
            safety_level: self.safety_level,
        }
    }
}

/// `field: description` when `value` is not a valid id.
fn id_problem(field: &str, value: &str) -> Option<String> {
    validate_id(field, value)
        .err()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
}

/// One `field: description` per violation, with the core's field prefix dropped.
fn describe_core_error(error: CoreError, prefix: &str) -> Vec<String> {
    match error {
        CoreError::InvalidArgument(violations) => violations
            .iter()
            .map(|violation| {
                let field = violation.field.strip_prefix(prefix).unwrap_or(&violation.field);
                format!("{field}: {}", violation.description)
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[location]]
        id = "dc-east"
        kind = "warehouse"
        name = "East DC"
        latitude = 40.71
        longitude = -74.01
        safety_stock = 2
        daily_capacity = 5000
        shipping_cost = 4.5

        [[location]]
        id = "store-12"
        kind = "store"
        active = false

        [[location]]
        id = "acme"
        kind = "3pl"

        [[channel]]
        id = "web"
        name = "Web store"
        locations = ["dc-east", "acme"]
        buffer = 5
        cap = 100

        [[channel]]
        id = "pos-12"
        locations = ["store-12"]
        state = "paused"
    "#;

    fn error_of(text: &str) -> String {
        format!("{:#}", ConfigFile::parse(text).expect_err("a bad file"))
    }

    #[test]
    fn reads_locations_and_channels_with_defaults() {
        let file = ConfigFile::parse(EXAMPLE).expect("valid file");
        assert_eq!(file.locations.len(), 3);
        assert_eq!(file.channels.len(), 2);

        let east = file.locations[0].to_proto();
        assert_eq!(east.location_id, "dc-east");
        assert_eq!(east.kind, LocationKind::Warehouse as i32);
        assert_eq!((east.latitude, east.longitude), (40.71, -74.01));
        assert_eq!((east.safety_stock, east.daily_capacity), (2, 5000));
        assert!(east.active);
        assert_eq!(east.state, atp_proto::v1::LifecycleState::Active as i32);

        let store = file.locations[1].to_proto();
        assert_eq!(store.kind, LocationKind::Store as i32);
        assert!(!store.active);
        assert_eq!(store.state, atp_proto::v1::LifecycleState::Paused as i32, "active = false");
        assert_eq!((store.name.as_str(), store.safety_stock), ("", 0));
        assert_eq!(file.locations[2].kind, KindEntry::ThirdParty);

        let web = file.channels[0].to_proto();
        assert_eq!(web.location_ids, ["dc-east", "acme"]);
        assert_eq!((web.buffer, web.cap), (5, Some(100)));
        let pos = file.channels[1].to_proto();
        assert_eq!((pos.buffer, pos.cap, pos.name.as_str()), (0, None, ""));
        assert_eq!(pos.state, atp_proto::v1::LifecycleState::Paused as i32);
        assert_eq!(web.state, atp_proto::v1::LifecycleState::Active as i32);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let file =
            ConfigFile::parse(include_str!("../config.example.toml")).expect("valid example");
        assert_eq!((file.locations.len(), file.channels.len()), (2, 2));
    }

    #[test]
    fn a_file_with_only_channels_is_fine() {
        let file = ConfigFile::parse("[[channel]]\nid = \"web\"\nlocations = [\"dc\"]\n")
            .expect("valid file");
        assert!(file.locations.is_empty());
        assert_eq!(file.channels.len(), 1);
    }

    #[test]
    fn errors_name_the_item() {
        let cases = [
            (
                "[[location]]\nid = \"dc\"\nkind = \"depot\"\n",
                "location \"dc\": kind: unknown variant `depot`",
            ),
            (
                "[[location]]\nid = \"dc\"\nkind = \"store\"\nkidn = 1\n",
                "location \"dc\": unknown field `kidn`",
            ),
            ("[[location]]\nkind = \"store\"\n", "location #1: missing field `id`"),
            ("[[location]]\nid = \"\"\nkind = \"store\"\n", "location \"\": id: must not be empty"),
            (
                "[[location]]\nid = \"dc\"\nkind = \"store\"\nlatitude = 10.0\n",
                "location \"dc\": latitude, longitude: give both, or neither",
            ),
            (
                "[[location]]\nid = \"dc\"\nkind = \"store\"\nlatitude = 100.0\nlongitude = 0.0\n",
                "location \"dc\": latitude: must be -90..=90",
            ),
            (
                "[[location]]\nid = \"dc\"\nkind = \"store\"\nsafety_stock = -1\n",
                "location \"dc\": safety_stock: must be 0..=",
            ),
            (
                "[[location]]\nid = \"dc\"\nkind = \"store\"\nsafety_stock = \"2\"\n",
                "location \"dc\": safety_stock: invalid type: string \"2\", expected i64",
            ),
            ("[[channel]]\nid = \"web\"\n", "channel \"web\": missing field `locations`"),
            (
                "[[channel]]\nid = \"web\"\nlocations = [\"a\", \"a\"]\n",
                "channel \"web\": locations[1]: location \"a\" is listed twice",
            ),
            (
                "[[channel]]\nid = \"web\"\nlocations = [\"a\"]\nbuffer = -2\n",
                "channel \"web\": buffer: must be >= 0",
            ),
            (
                "[[channel]]\nid = \"web\"\nlocations = [\"a\"]\ncap = -1\n",
                "channel \"web\": cap: must be >= 0",
            ),
        ];
        for (text, expected) in cases {
            let error = error_of(text);
            assert!(error.contains(expected), "{text:?}\n  got: {error}\n  want: {expected}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[[location]]\nid = \"dc\"\nkind = \"depot\"\n\
                    [[location]]\nid = \"ok\"\nkind = \"store\"\n\
                    [[channel]]\nid = \"web\"\nlocations = [\"ok\"]\nbuffer = -2\n\
                    [[shops]]\n";
        let error = error_of(text);
        assert!(error.starts_with("3 problems:\n"), "{error}");
        for part in
            ["unknown variant `depot`", "buffer: must be >= 0", "unknown top-level key `shops`"]
        {
            assert!(error.contains(part), "{part} missing in {error}");
        }
    }

    #[test]
    fn a_channel_carries_its_publishing_rule() {
        let text = "[[channel]]\nid = \"web\"\nlocations = [\"a\"]\npublish_lag_ms = 60000\nsafety_level = 990\n";
        let file = ConfigFile::parse(text).expect("valid");
        let channel = file.channels[0].to_proto();
        assert_eq!((channel.publish_lag_ms, channel.safety_level), (60_000, Some(990)));
        let text = "[[channel]]\nid = \"web\"\nlocations = [\"a\"]\npublish_lag_ms = -1\nsafety_level = 1000\n";
        let error = format!("{:#}", ConfigFile::parse(text).expect_err("out of range"));
        assert!(error.contains("publish_lag_ms: must be 0..=86400000"), "{error}");
        assert!(error.contains("safety_level: must be 0..=999"), "{error}");
    }

    #[test]
    fn every_problem_of_one_entry_is_reported() {
        let text = "[[channel]]\nid = \"web\"\nlocations = [\"a\", \"a\", \"\"]\n\
                    buffer = -2\ncap = -1\ncolour = \"red\"\nstate = \"closed\"\n";
        let error = error_of(text);
        let expected = [
            "channel \"web\": unknown field `colour`, expected one of `id`, `name`, `locations`, `buffer`, `cap`, `state`, `publish_lag_ms`, `safety_level`",
            "channel \"web\": state: unknown variant `closed`, expected one of `active`, `paused`, `retired`",
            "channel \"web\": locations[1]: location \"a\" is listed twice",
            "channel \"web\": locations[2]: must not be empty",
            "channel \"web\": buffer: must be >= 0",
            "channel \"web\": cap: must be >= 0",
        ];
        let mut found: Vec<&str> = error.lines().skip(1).map(str::trim).collect();
        found.sort_unstable();
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(found, expected, "{error}");
        assert!(error.starts_with("6 problems:\n"), "{error}");

        // A bad field does not hide the others, nor is it reported twice.
        let text = "[[channel]]\nid = \"pos\"\nlocations = \"a\"\nbuffer = \"5\"\ncap = -1\n\
                    [[location]]\nid = \"dc\"\nkind = \"depot\"\nlatitude = \"north\"\n\
                    longitude = 200.0\nsafety_stock = -1\n\
                    [[location]]\nname = \"\\u0007\"\ndaily_capacity = -1\n";
        let error = error_of(text);
        let lines: Vec<&str> = error.lines().skip(1).map(str::trim).collect();
        for part in [
            "channel \"pos\": locations: invalid type: string \"a\", expected a sequence",
            "channel \"pos\": buffer: invalid type: string \"5\", expected i64",
            "channel \"pos\": cap: must be >= 0",
            "location \"dc\": kind: unknown variant `depot`",
            "location \"dc\": latitude: invalid type: string \"north\", expected f64",
            "location \"dc\": longitude: must be -180..=180",
            "location \"dc\": safety_stock: must be 0..=",
            "location #2: missing field `id`",
            "location #2: missing field `kind`",
            "location #2: name: ",
            "location #2: daily_capacity: must be >= 0",
        ] {
            assert_eq!(
                lines.iter().filter(|line| line.starts_with(part)).count(),
                1,
                "{part} not reported once in {error}"
            );
        }
        assert_eq!(lines.len(), 11, "nothing else: {error}");
    }

    #[test]
    fn channels_naming_locations_nobody_has_are_flagged() {
        let text = "[[location]]\nid = \"dc\"\nkind = \"store\"\n\
                    [[channel]]\nid = \"web\"\nlocations = [\"dc\", \"on-node\", \"nowhere\"]\n";
        let file = ConfigFile::parse(text).expect("valid file");
        let known = HashSet::from(["on-node".to_owned()]);
        assert_eq!(
            file.unknown_locations(&known),
            [
                "channel \"web\": locations[2]: location \"nowhere\" is neither in the file nor on the node"
            ]
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = "[[location]]\nid = \"dc\"\nkind = \"store\"\n\
                    [[location]]\nid = \"x\"\nkind = \"store\"\n\
                    [[location]]\nid = \"dc\"\nkind = \"warehouse\"\n";
        assert_eq!(error_of(text), "location \"dc\" is declared twice (#1 and #3)");
    }

    #[test]
    fn structural_mistakes_are_explained() {
        assert!(
            error_of("[[locations]]\nid = \"dc\"\n").contains("unknown top-level key `locations`")
        );
        assert!(
            error_of("[location]\nid = \"dc\"\n")
                .contains("must be written as [[location]] tables")
        );
        assert!(error_of("location = [1]\n").contains("location #1: must be a table"));
        assert!(error_of("").contains("declares no [[location]] or [[channel]]"));
        let syntax = error_of("[[location]]\nid = \"dc\n");
        assert!(syntax.starts_with("invalid TOML: "), "{syntax}");
        assert!(syntax.contains("line 2"), "{syntax}");
    }
}
