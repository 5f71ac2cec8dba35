//! The edge between gRPC and the domain: the generated `atp.v1` code, the
//! conversions to and from `atp-core` types, and the one error table.
//!
//! This is the only crate that sees generated code (besides the services that
//! implement its traits). Everything that crosses it is checked here:
//!
//! - [`requests`]: request messages → validated domain values. Every bad field
//!   is collected (not just the first) as a [`atp_core::FieldViolation`] whose
//!   path names it (`lines[3].quantity`, `events[2].received.quantity`), and the
//!   whole request is refused with [`atp_core::CoreError::InvalidArgument`].
//!   Counts are checked before items, so a request with 10,000 lines costs one
//!   comparison.
//! - [`replies`]: domain values → reply messages (`From` impls).
//! - [`status`]: [`status::status_of`], the exhaustive table from
//!   [`atp_core::CoreError`] to [`tonic::Status`] with `google.rpc` details,
//!   and [`status::rpc_status`] for an error carried inside a reply (the
//!   items of a ReserveBatch).
//! - [`reason`]: [`reason::Reason`], every reason a status can carry, each
//!   with its gRPC code; statuses are built only through it.
//! - [`catalog_entries`]: one location or channel as bytes (protobuf
//!   `atp.v1.Location` / `atp.v1.Channel`), the values of the cluster
//!   configuration in etcd.

pub mod catalog_entries;
pub mod reason;
pub mod replies;
pub mod requests;
pub mod status;

pub use reason::{ERROR_DOMAIN, Reason, reason_of};

/// The request header carrying the epoch the client believes the request's
/// first shard (its home, for a reservation) has: a decimal number.
pub const EPOCH_HEADER: &str = "x-atp-epoch";
pub use status::{code_name, rpc_status, status_from_rpc, status_of};

/// Generated messages, clients and servers of package `atp.v1`
/// (`proto/atp/v1/*.proto`).
pub mod v1 {
    // Generated code, not ours to lint. Its docs are the proto comments,
    // written for proto readers, not rustdoc: a `[a, b]` or `<id>` or a bare
    // URL in a future comment must not break `cargo doc -D warnings`.
    #![allow(
        missing_docs,
        clippy::all,
        rustdoc::broken_intra_doc_links,
        rustdoc::invalid_html_tags,
        rustdoc::bare_urls
    )]
    tonic::include_proto!("atp.v1");

    /// Encoded file descriptor set of `atp.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("atp_v1_descriptor");
}

/// Generated messages, client and server of package `atp.internal.v1`
/// (`proto/atp/internal/v1/peer.proto`): node-to-node messages, not for clients.
pub mod internal {
    // Generated code, not ours to lint (see `v1`).
    #![allow(
        missing_docs,
        clippy::all,
        rustdoc::broken_intra_doc_links,
        rustdoc::invalid_html_tags,
        rustdoc::bare_urls
    )]
    tonic::include_proto!("atp.internal.v1");
}
