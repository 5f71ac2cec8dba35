//! Kits at the API's edge (issue 12): a Reserve or ModifyReservation line
//! naming a kit holds its components instead (quantities summed per
//! (component, location)), and GetAvailability answers a kit's figures from
//! its components' (see [`atp_core::kits`]).

use std::collections::BTreeMap;

use atp_core::catalog::Catalog;
use atp_core::hash::shard_of;
use atp_core::ids::Sku;
use atp_core::kits::{Kit, expand};
use atp_proto::status_of;
use atp_proto::v1;
use tonic::Status;

/// `lines` with every kit line replaced by its components' lines (same
/// location, summed); untouched when no line names a kit, or when a SKU is
/// malformed (parsing then reports it).
pub(crate) fn expand_lines(
    lines: &mut Vec<v1::ReservationLine>,
    catalog: &Catalog,
) -> Result<(), Status> {
    if catalog.kits.is_empty() {
        return Ok(());
    }
    let mut parsed = Vec::with_capacity(lines.len());
    for line in lines.iter() {
        let Ok(sku) = Sku::parse("sku", &line.sku) else { return Ok(()) };
        parsed.push((sku, line.location_id.clone(), line.quantity));
    }
    if !parsed.iter().any(|(sku, _, _)| catalog.kits.contains_key(sku)) {
        return Ok(());
    }
    let expanded = expand(&parsed, |sku| catalog.kits.get(sku).cloned()).map_err(status_of)?;
    *lines = expanded
        .into_iter()
        .map(|(sku, location_id, quantity)| v1::ReservationLine {
            sku: sku.to_string(),
            location_id,
            quantity,
        })
        .collect();
    Ok(())
}

/// The kits among `skus`, and the SKUs to read for the rest: the non-kits
/// as asked, then every kit's components not asked already.
pub(crate) fn split_kits(skus: &[String], catalog: &Catalog) -> (Vec<Kit>, Vec<String>) {
    let mut kits = Vec::new();
    let mut read: Vec<String> = Vec::with_capacity(skus.len());
    for sku in skus {
        let kit = Sku::parse("sku", sku).ok().and_then(|sku| catalog.kits.get(&sku).cloned());
        match kit {
            Some(kit) => kits.push(kit),
            None => read.push(sku.clone()),
        }
    }
    for kit in &kits {
        for (component, _) in &kit.components {
            if !read.iter().any(|sku| sku == component.as_str()) {
                read.push(component.to_string());
            }
        }
    }
    (kits, read)
}

/// A kit's figures from its components' (`read`): per location, ATP =
/// min over components of ⌊ATP / quantity⌋ (the other buckets are 0: a kit
/// has no stock); per channel, the same over the components' channel ATP.
/// A kit's demand rate is 0: its holds are counted against its components,
/// mixed with their own sales, so no rate of the kit is observed (the min
/// over components of rate / quantity would read their own demand as the
/// kit's).
/// A component that could not be read makes the kit unreadable with its error.
pub(crate) fn kit_figures(kit: &Kit, read: &[v1::SkuAvailability]) -> v1::SkuAvailability {
    let mut figures = v1::SkuAvailability {
        sku: kit.sku.to_string(),
        shard: shard_of(kit.sku.as_str()),
        ..Default::default()
    };
    let components: Vec<(&v1::SkuAvailability, i64)> = kit
        .components
        .iter()
        .filter_map(|(sku, quantity)| {
            read.iter().find(|figures| figures.sku == sku.as_str()).map(|f| (f, *quantity))
        })
        .collect();
    if let Some(error) = components.iter().find_map(|(f, _)| f.error.clone()) {
        figures.error = Some(error);
        return figures;
    }
    figures.epoch = components.iter().map(|(f, _)| f.epoch).max().unwrap_or(0);
    let mut locations: BTreeMap<&str, i64> = BTreeMap::new();
    // Per channel: (atp, published).
    let mut channels: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    if let Some((first, _)) = components.first() {
        for at in &first.locations {
            locations.insert(at.location_id.as_str(), i64::MAX);
        }
        for shown in &first.channels {
            channels.insert(shown.channel_id.as_str(), (i64::MAX, i64::MAX));
        }
    }
    for (component, quantity) in &components {
        for (location, atp) in locations.iter_mut() {
            let units = component
                .locations
                .iter()
                .find(|at| at.location_id == *location)
                .map_or(0, |at| at.atp);
            *atp = (*atp).min(units.max(0) / quantity);
        }
        for (channel, (atp, published)) in channels.iter_mut() {
            let shown = component.channels.iter().find(|shown| shown.channel_id == *channel);
            let (units, shown) = shown.map_or((0, 0), |shown| (shown.atp, shown.published));
            *atp = (*atp).min(units.max(0) / quantity);
            *published = (*published).min(shown.max(0) / quantity);
        }
    }
    if components.len() < kit.components.len() {
        // A component without figures has none to give.
        locations.values_mut().for_each(|atp| *atp = 0);
        channels.values_mut().for_each(|figures| *figures = (0, 0));
    }
    figures.locations = locations
        .into_iter()
        .map(|(location_id, atp)| v1::LocationAvailability {
            location_id: location_id.to_owned(),
            atp,
            ..Default::default()
        })
        .collect();
    figures.channels = channels
        .into_iter()
        .map(|(channel_id, (atp, published))| v1::ChannelAvailability {
            channel_id: channel_id.to_owned(),
            atp,
            published,
            // Not observed for a kit (see above).
            demand_per_hour: 0.0,
        })
        .collect();
    figures
}
