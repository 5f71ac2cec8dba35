//! One function per subcommand: check the input, call the server, print the answer.

mod admin;
mod allocate;
mod availability;
mod batch;
mod cluster;
mod config;
pub mod demand;
mod event;
mod import;
pub mod publish;
mod reservation;
mod reservations;

use std::process::ExitCode;

use crate::cli::{
    ChannelCommand, Cli, ClusterCommand, Command, ConfigCommand, KitCommand, LocationCommand,
    NodeCommand, ReservationsCommand, ShardArgs, ShardCommand,
};
use crate::client::Context;

/// Runs the parsed command line. `Ok(ExitCode::from(crate::status::exit::PARTLY_REFUSED))` means the call worked but the
/// server refused part of the work (a rejected stock event); that has been printed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let context = Context::new(&cli);
    let context = &context;
    match cli.command {
        Command::Reserve(args) => reservation::reserve(context, args).await,
        Command::ReserveBatch(args) => batch::reserve_batch(context, args).await,
        Command::Commit(args) => reservation::commit(context, args).await,
        Command::Release(args) => reservation::release(context, args).await,
        Command::Cancel(args) => reservation::cancel(context, args).await,
        Command::Extend(args) => reservation::extend(context, args).await,
        Command::Modify(args) => reservation::modify(context, args).await,
        Command::Allocate(args) => allocate::allocate(context, args).await,
        Command::GetReservation(args) => reservation::get(context, args).await,
        Command::Reservations(ReservationsCommand::Get(args)) => {
            reservations::get(context, args).await
        }
        Command::Reservations(ReservationsCommand::List(args)) => {
            reservations::list(context, args).await
        }
        Command::Availability(args) => availability::availability(context, args).await,
        Command::Demand(args) => demand::demand(context, args).await,
        Command::Event(event) => event::send(context, event).await,
        Command::Location(LocationCommand::Upsert(args)) => {
            config::upsert_location(context, *args).await
        }
        Command::Location(LocationCommand::List) => config::list_locations(context).await,
        Command::Channel(ChannelCommand::Upsert(args)) => {
            config::upsert_channel(context, args).await
        }
        Command::Channel(ChannelCommand::List) => config::list_channels(context).await,
        Command::Kit(KitCommand::Upsert(args)) => config::upsert_kit(context, args).await,
        Command::Kit(KitCommand::List) => config::list_kits(context).await,
        Command::Config(ConfigCommand::Apply { file }) => config::apply(context, &file).await,
        Command::Config(ConfigCommand::Check { file, offline }) => {
            config::check(context, &file, offline).await
        }
        Command::Import(args) => import::import(context, args).await,
        Command::Shards(args) => admin::shards(context, args).await,
        Command::Shard(ShardArgs { command: Some(ShardCommand::Reassign(args)), .. }) => {
            cluster::reassign(context, args).await
        }
        Command::Shard(ShardArgs { command: Some(ShardCommand::Move(args)), .. }) => {
            cluster::move_shard(context, args).await
        }
        Command::Shard(args) => admin::shard(context, args).await,
        Command::Ledger(args) => admin::ledger(context, args).await,
        Command::Cluster(ClusterCommand::Members) => cluster::members(context).await,
        Command::Cluster(ClusterCommand::Shards(args)) => cluster::shards(context, args).await,
        Command::Node(NodeCommand::Drain(args)) => cluster::drain(context, args).await,
        Command::Publish(command) => publish::run(context, command).await,
    }
}
