//! Calls atp makes to its own service (Allocate's Reserve, a rebind's
//! ModifyReservation) may use the reserved names
//! ([`atp_proto::refuse_reserved_names`]); they carry [`OwnCall`], a
//! request extension that never goes on the wire. A forwarded request was
//! checked by the node that forwarded it.

use tonic::Request;

/// Marks a request atp makes to itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnCall;

/// `message` as a call atp makes to itself.
pub(crate) fn own<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(OwnCall);
    request
}

/// Whether `request` is one atp made to itself.
pub(crate) fn is_own<T>(request: &Request<T>) -> bool {
    request.extensions().get::<OwnCall>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_marked_own_are_own() {
        assert!(is_own(&own(1)));
        assert!(!is_own(&Request::new(1)));
    }
}
