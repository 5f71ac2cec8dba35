//! Kits (issue 12): a SKU sold as a bundle of components × quantities. A
//! kit has no stock of its own: its ATP at a location is the minimum over
//! its components of ⌊component ATP / quantity⌋, and a hold of a kit holds
//! its components (see [`expand`]). Kits do not nest.

use crate::error::{CoreError, FieldViolation};
use crate::ids::{MAX_LINE_QUANTITY, Sku};

/// Most components one kit may have.
pub const MAX_KIT_COMPONENTS: usize = 32;
/// The most units of one component a kit may need.
pub const MAX_KIT_COMPONENT_QUANTITY: i64 = 1_000;
/// Most kits one deployment may configure.
pub const MAX_KITS: usize = 100_000;

/// A kit: its SKU and what one unit of it is made of.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kit {
    /// The kit's own SKU (what orders name).
    pub sku: Sku,
    /// Human name.
    pub name: String,
    /// (component SKU, units per kit), each component once.
    pub components: Vec<(Sku, i64)>,
}

impl Kit {
    /// Checks what depends on the kit alone; `field` prefixes the names.
    pub fn validate(&self, field: &str) -> Result<(), CoreError> {
        let mut violations = Vec::new();
        if let Err(violation) = crate::ids::validate_text(&format!("{field}.name"), &self.name) {
            violations.push(violation);
        }
        if self.components.is_empty() || self.components.len() > MAX_KIT_COMPONENTS {
            violations.push(FieldViolation::new(
                format!("{field}.components"),
                format!("has {}; must be 1..={MAX_KIT_COMPONENTS}", self.components.len()),
            ));
        }
        for (index, (component, quantity)) in self.components.iter().enumerate() {
            let at = format!("{field}.components[{index}]");
            if !(1..=MAX_KIT_COMPONENT_QUANTITY).contains(quantity) {
                violations.push(FieldViolation::new(
                    format!("{at}.quantity"),
                    format!("is {quantity}; must be 1..={MAX_KIT_COMPONENT_QUANTITY}"),
                ));
            }
            if component == &self.sku {
                violations.push(FieldViolation::new(
                    format!("{at}.sku"),
                    "a kit cannot be its own component",
                ));
            }
            if self.components[..index].iter().any(|(earlier, _)| earlier == component) {
                violations.push(FieldViolation::new(
                    format!("{at}.sku"),
                    format!("component {component} is listed twice"),
                ));
            }
            if crate::capacity::is_counter(component) {
                violations.push(FieldViolation::new(format!("{at}.sku"), "is a reserved sku"));
            }
        }
        if crate::capacity::is_counter(&self.sku) {
            violations.push(FieldViolation::new(format!("{field}.sku"), "is a reserved sku"));
        }
        if violations.is_empty() { Ok(()) } else { Err(CoreError::InvalidArgument(violations)) }
    }

    /// Kits available from components' ATP (`atp_of(component)`).
    pub fn atp(&self, atp_of: impl Fn(&Sku) -> i64) -> i64 {
        self.components
            .iter()
            .map(|(component, quantity)| atp_of(component).max(0) / quantity)
            .min()
            .unwrap_or(0)
    }
}

/// `lines` (sku, location, quantity) with every kit's line replaced by its
/// components' lines at the same location, quantities summed per
/// (sku, location) in order of first mention. A component quantity past
/// [`MAX_LINE_QUANTITY`] is an error naming `lines[i].quantity`.
pub fn expand<L: Clone + PartialEq>(
    lines: &[(Sku, L, i64)],
    kit_of: impl Fn(&Sku) -> Option<Kit>,
) -> Result<Vec<(Sku, L, i64)>, CoreError> {
    let mut expanded: Vec<(Sku, L, i64)> = Vec::with_capacity(lines.len());
    let mut add = |sku: &Sku, location: &L, units: i64| match expanded
        .iter_mut()
        .find(|(s, l, _)| s == sku && l == location)
    {
        Some((_, _, total)) => *total = total.saturating_add(units),
        None => expanded.push((sku.clone(), location.clone(), units)),
    };
    for (index, (sku, location, quantity)) in lines.iter().enumerate() {
        match kit_of(sku) {
            Some(kit) => {
                for (component, per_kit) in &kit.components {
                    let units = quantity.saturating_mul(*per_kit);
                    if units > MAX_LINE_QUANTITY {
                        return Err(CoreError::invalid(
                            format!("lines[{index}].quantity"),
                            format!(
                                "{quantity} kits of {sku} need {units} of {component}; a line \
                                 holds at most {MAX_LINE_QUANTITY}"
                            ),
                        ));
                    }
                    add(component, location, units);
                }
            }
            None => add(sku, location, *quantity),
        }
    }
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(text: &str) -> Sku {
        Sku::parse("sku", text).expect("a sku")
    }

    fn gift_box() -> Kit {
        Kit {
            sku: sku("box"),
            name: "gift box".into(),
            components: vec![(sku("mug"), 1), (sku("tea"), 3)],
        }
    }

    #[test]
    fn a_kits_atp_is_its_scarcest_component() {
        // mug 7 → 7 boxes; tea 10 → ⌊10 / 3⌋ = 3 boxes: 3.
        let atp = gift_box().atp(|component| if component.as_str() == "mug" { 7 } else { 10 });
        assert_eq!(atp, 3);
    }

    #[test]
    fn lines_sharing_a_component_sum_per_location() {
        let kits = |s: &Sku| (s.as_str() == "box").then(gift_box);
        let lines = vec![(sku("box"), "dc-1", 2), (sku("tea"), "dc-1", 1), (sku("tea"), "dc-2", 4)];
        let expanded = expand(&lines, kits).expect("expands");
        assert_eq!(
            expanded,
            vec![(sku("mug"), "dc-1", 2), (sku("tea"), "dc-1", 7), (sku("tea"), "dc-2", 4)]
        );
        let huge = vec![(sku("box"), "dc-1", 400_000)];
        assert!(expand(&huge, kits).is_err());
    }

    #[test]
    fn a_kit_is_checked() {
        let mut bad = gift_box();
        bad.components.push((sku("box"), 0));
        bad.components.push((sku("mug"), 1));
        let Err(CoreError::InvalidArgument(violations)) = bad.validate("kit") else {
            panic!("invalid")
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["kit.components[2].quantity", "kit.components[2].sku", "kit.components[3].sku"]
        );
    }
}
