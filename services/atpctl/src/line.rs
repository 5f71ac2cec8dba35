//! `SKU@LOCATION=QUANTITY`: how a reservation or commit line is written on the command line;
//! `SKU=QUANTITY`: an order line of `allocate`, whose locations the server chooses.

use std::fmt;
use std::str::FromStr;

use atp_proto::v1::{CommitLine, ReservationLine};

/// One line of a reserve or commit: units of a SKU at a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSpec {
    pub sku: String,
    pub location_id: String,
    pub quantity: i64,
}

/// Why a line could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSpecError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for LineSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: {}; expected SKU@LOCATION=QUANTITY, e.g. sku-1@dc-east=2",
            self.input, self.reason
        )
    }
}

impl std::error::Error for LineSpecError {}

impl FromStr for LineSpec {
    type Err = LineSpecError;

    /// The quantity follows the last `=`, the location the last `@` before it,
    /// so a SKU may itself contain `@` or `=` (a location id may not).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| LineSpecError { input: input.to_owned(), reason };
        let (item, quantity) = input.rsplit_once('=').ok_or_else(|| error("missing `=`"))?;
        let (sku, location_id) = item.rsplit_once('@').ok_or_else(|| error("missing `@`"))?;
        let (sku, location_id, quantity) = (sku.trim(), location_id.trim(), quantity.trim());
        if sku.is_empty() {
            return Err(error("the sku is empty"));
        }
        if location_id.is_empty() {
            return Err(error("the location is empty"));
        }
        let quantity: i64 =
            quantity.parse().map_err(|_| error("the quantity is not a whole number"))?;
        if quantity < 0 {
            return Err(error("the quantity is negative"));
        }
        Ok(LineSpec { sku: sku.to_owned(), location_id: location_id.to_owned(), quantity })
    }
}

/// One line of an order (`allocate`): units of a SKU, wherever they ship from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLineSpec {
    pub sku: String,
    pub quantity: i64,
}

impl FromStr for OrderLineSpec {
    type Err = String;

    /// The quantity follows the last `=`, so a SKU may itself contain `=`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error =
            |reason: &str| format!("{input:?}: {reason}; expected SKU=QUANTITY, e.g. sku-1=2");
        let (sku, quantity) = input.rsplit_once('=').ok_or_else(|| error("missing `=`"))?;
        let (sku, quantity) = (sku.trim(), quantity.trim());
        if sku.is_empty() {
            return Err(error("the sku is empty"));
        }
        let quantity: i64 =
            quantity.parse().map_err(|_| error("the quantity is not a whole number"))?;
        if quantity < 0 {
            return Err(error("the quantity is negative"));
        }
        Ok(OrderLineSpec { sku: sku.to_owned(), quantity })
    }
}

/// One reservation of `reserve-batch`: `ID:SKU@LOC=QTY[,SKU@LOC=QTY…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchItem {
    pub id: String,
    pub lines: Vec<LineSpec>,
}

impl FromStr for BatchItem {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (id, lines) = input
            .split_once(':')
            .ok_or_else(|| format!("{input:?}: expected ID:SKU@LOCATION=QUANTITY[,…]"))?;
        if id.trim().is_empty() {
            return Err(format!("{input:?}: the reservation id is empty"));
        }
        let lines = lines
            .split(',')
            .map(|line| line.parse::<LineSpec>().map_err(|error| error.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchItem { id: id.trim().to_owned(), lines })
    }
}

impl From<LineSpec> for ReservationLine {
    fn from(line: LineSpec) -> Self {
        ReservationLine { sku: line.sku, location_id: line.location_id, quantity: line.quantity }
    }
}

impl From<LineSpec> for CommitLine {
    fn from(line: LineSpec) -> Self {
        CommitLine { sku: line.sku, location_id: line.location_id, quantity: line.quantity }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<LineSpec, LineSpecError> {
        input.parse()
    }

    #[test]
    fn reads_sku_location_and_quantity() {
        let line = parse("sku-1@dc-east=2").expect("valid line");
        assert_eq!(
            line,
            LineSpec { sku: "sku-1".into(), location_id: "dc-east".into(), quantity: 2 }
        );
    }

    #[test]
    fn sku_may_contain_at_and_equals() {
        let line = parse("a@b=c@store-1=10").expect("valid line");
        assert_eq!(line.sku, "a@b=c");
        assert_eq!(line.location_id, "store-1");
        assert_eq!(line.quantity, 10);
    }

    #[test]
    fn zero_is_allowed_for_commits() {
        assert_eq!(parse("s@l=0").expect("valid line").quantity, 0);
    }

    #[test]
    fn surrounding_spaces_are_ignored() {
        let line = parse(" s @ l = 3 ").expect("valid line");
        assert_eq!((line.sku.as_str(), line.location_id.as_str(), line.quantity), ("s", "l", 3));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("s@l", "missing `=`"),
            ("s=3", "missing `@`"),
            ("@l=3", "the sku is empty"),
            ("s@=3", "the location is empty"),
            ("s@l=", "the quantity is not a whole number"),
            ("s@l=1.5", "the quantity is not a whole number"),
            ("s@l=x", "the quantity is not a whole number"),
            ("s@l=-1", "the quantity is negative"),
            ("s@l=99999999999999999999", "the quantity is not a whole number"),
        ];
        for (input, reason) in cases {
            let error = parse(input).expect_err(input);
            assert_eq!(error.reason, reason, "{input}");
            assert!(error.to_string().contains("SKU@LOCATION=QUANTITY"));
        }
    }

    #[test]
    fn order_lines_are_sku_equals_quantity() {
        let line: OrderLineSpec = "a=b=3".parse().expect("valid order line");
        assert_eq!(line, OrderLineSpec { sku: "a=b".into(), quantity: 3 });
        for (input, reason) in [
            ("tee", "missing `=`"),
            ("=3", "the sku is empty"),
            ("tee=x", "the quantity is not a whole number"),
            ("tee=-1", "the quantity is negative"),
        ] {
            let error = input.parse::<OrderLineSpec>().expect_err(input);
            assert!(error.contains(reason) && error.contains("SKU=QUANTITY"), "{input}: {error}");
        }
    }

    #[test]
    fn converts_to_proto_lines() {
        let line = parse("s@l=4").expect("valid line");
        let reserve = ReservationLine::from(line.clone());
        assert_eq!(
            (reserve.sku.as_str(), reserve.location_id.as_str(), reserve.quantity),
            ("s", "l", 4)
        );
        let commit = CommitLine::from(line);
        assert_eq!(commit.quantity, 4);
    }
}
