//! A checkout with the atp SDK: hold the cart's lines, then commit the hold
//! when payment succeeds or release it when it fails.
//!
//! ```text
//! cargo run -p atp-client --example checkout -- http://127.0.0.1:50051 order-1001 web tee@dc-1=2 mug@dc-1=1
//! ```
//!
//! Arguments: the node's endpoint, the order id (the reservation id: a
//! retry of the same checkout reuses it), the channel, then `SKU@LOCATION=QTY`
//! lines. `ATP_PAYMENT=declined` makes the payment step fail.

use atp_client::{Client, Error, Reservation, ReservationState, Reserve};

/// How a checkout ended.
#[derive(Debug)]
pub enum Outcome {
    /// Paid: the hold became an order.
    Ordered(Reservation),
    /// Payment failed: the hold was released.
    Released(Reservation),
    /// A retry of a checkout whose hold had already ended (released,
    /// expired or cancelled): the reservation as it stands now.
    Ended(Reservation),
    /// Not enough stock for a line: nothing was held.
    OutOfStock {
        /// The SKU that ran short.
        sku: String,
        /// Units the channel could still promise.
        available: i64,
    },
}

/// Reserves `reserve`'s lines, then commits them if `pay` succeeds or
/// releases them if it fails. Run again with the same Reserve (a retry of
/// the same checkout), it carries on from where the reservation is now.
pub async fn checkout(
    client: &Client,
    reserve: Reserve,
    pay: impl FnOnce(&Reservation) -> bool,
) -> Result<Outcome, Error> {
    let held = match client.reserve(reserve).await {
        Ok(held) => held,
        Err(Error::InsufficientStock { sku, available, .. }) => {
            return Ok(Outcome::OutOfStock { sku, available });
        }
        Err(error) => return Err(error),
    };
    assert_eq!(held.state, ReservationState::Held, "a Reserve answers a held reservation");
    // A replay is the first answer again; an earlier attempt of this
    // checkout may have ordered or released the hold since.
    let current = held.latest();
    match current.state {
        ReservationState::Held => {}
        ReservationState::Committed | ReservationState::Fulfilled => {
            return Ok(Outcome::Ordered(current.clone()));
        }
        _ => return Ok(Outcome::Ended(current.clone())),
    }
    if pay(&held) {
        Ok(Outcome::Ordered(client.commit(&held.reservation_id).await?))
    } else {
        Ok(Outcome::Released(client.release(&held.reservation_id).await?))
    }
}

/// Reads `SKU@LOCATION=QTY`.
fn parse_line(text: &str) -> Option<(String, String, i64)> {
    let (sku, rest) = text.split_once('@')?;
    let (location, quantity) = rest.split_once('=')?;
    Some((sku.to_owned(), location.to_owned(), quantity.parse().ok()?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, order, channel, lines @ ..] = arguments.as_slice() else {
        return Err("usage: checkout ENDPOINT ORDER_ID CHANNEL SKU@LOCATION=QTY...".into());
    };
    let mut reserve = Reserve::new(order.as_str(), channel.as_str());
    for line in lines {
        let (sku, location, quantity) =
            parse_line(line).ok_or_else(|| format!("line {line:?}: expected SKU@LOCATION=QTY"))?;
        reserve = reserve.line(sku, location, quantity);
    }
    let client = Client::new(endpoint.as_str())?;
    let declined = std::env::var("ATP_PAYMENT").is_ok_and(|payment| payment == "declined");
    let outcome = checkout(&client, reserve, |_| !declined).await?;
    // An example prints its result; the library never does.
    #[allow(clippy::print_stdout)]
    {
        println!("{outcome:?}");
    }
    Ok(())
}
