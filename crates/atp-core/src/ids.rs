//! Validated identifiers and the named limits every request is checked against.

use std::fmt;
use std::sync::Arc;

use crate::error::FieldViolation;

/// Longest id of any kind, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Most units one reservation line may ask for.
pub const MAX_LINE_QUANTITY: i64 = 1_000_000;
/// Most lines one reservation may have.
pub const MAX_LINES_PER_RESERVATION: usize = 100;
/// Shortest hold lifetime.
pub const MIN_TTL_MS: i64 = 1_000;
/// Longest hold lifetime (24 h).
pub const MAX_TTL_MS: i64 = 24 * 60 * 60 * 1_000;
/// Most units a single stock event may move.
pub const MAX_EVENT_QUANTITY: i64 = 1_000_000_000;
/// Largest on_hand (or other bucket) a position may reach; events past it are refused.
pub const MAX_POSITION_UNITS: i64 = 1_000_000_000_000_000;
/// Most events per ApplyStockEvents call.
pub const MAX_EVENTS_PER_BATCH: usize = 1_000;
/// Most SKUs per availability query.
pub const MAX_SKUS_PER_QUERY: usize = 1_000;
/// Longest free-text field (reasons, names), in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// Most labels on one reservation's metadata.
pub const MAX_LABELS_PER_RESERVATION: usize = 8;
/// Longest label key, in bytes (`[A-Za-z0-9_.-]`, not empty).
pub const MAX_LABEL_KEY_BYTES: usize = 64;
/// Longest label value, in UTF-8 bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;

/// Checks the common id rules: non-empty, at most [`MAX_ID_BYTES`], no
/// control characters, no invisible or bidirectional formatting characters
/// ([`is_invisible`]), and Unicode NFC, so two ids that look the same are the
/// same bytes (and so hash to the same shard).
pub fn validate_id(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(FieldViolation::new(
            field,
            format!("is {} bytes; the limit is {MAX_ID_BYTES}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "must not contain control characters"));
    }
    if let Some((at, invisible)) = value.char_indices().find(|(_, c)| is_invisible(*c)) {
        return Err(FieldViolation::new(
            field,
            format!(
                "must not contain invisible or bidirectional formatting characters \
                 (U+{:04X} at byte {at})",
                u32::from(invisible)
            ),
        ));
    }
    if !unicode_normalization::is_nfc(value) {
        return Err(FieldViolation::new(field, "must be Unicode NFC (normalization form C)"));
    }
    Ok(())
}

/// Whether `c` is invisible or changes the text's direction: Unicode's
/// Default_Ignorable_Code_Point set (zero-width spaces and joiners, soft
/// hyphen, bidirectional marks, embeddings, overrides and isolates, word
/// joiners, variation selectors, tags, the byte order mark), the other
/// format characters (Cf) and the line and paragraph separators. Such
/// characters make two ids look alike or reorder how an id is shown.
pub fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Checks a free-text field: at most [`MAX_TEXT_BYTES`], no control characters.
pub fn validate_text(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(FieldViolation::new(
            field,
            format!("is {} bytes; the limit is {MAX_TEXT_BYTES}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "must not contain control characters"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` as this id; `field` names it in the error.
            pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
                validate_id(field, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, shared (no copy).
            pub fn shared(&self) -> Arc<str> {
                Arc::clone(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

id_type!(
    /// A stock keeping unit.
    Sku
);
id_type!(
    /// A fulfilment location (warehouse, store, 3PL).
    LocationId
);
id_type!(
    /// A sales channel (storefront, marketplace, POS).
    ChannelId
);
id_type!(
    /// A caller-chosen reservation id, global to the service.
    ReservationId
);
id_type!(
    /// A stock event id, applied at most once.
    EventId
);

/// Checks a reservation line quantity: 1..=[`MAX_LINE_QUANTITY`].
pub fn validate_line_quantity(field: &str, quantity: i64) -> Result<(), FieldViolation> {
    if !(1..=MAX_LINE_QUANTITY).contains(&quantity) {
        return Err(FieldViolation::new(
            field,
            format!("is {quantity}; must be 1..={MAX_LINE_QUANTITY}"),
        ));
    }
    Ok(())
}

/// Checks a stock event quantity: 1..=[`MAX_EVENT_QUANTITY`].
pub fn validate_event_quantity(field: &str, quantity: i64) -> Result<(), FieldViolation> {
    if !(1..=MAX_EVENT_QUANTITY).contains(&quantity) {
        return Err(FieldViolation::new(
            field,
            format!("is {quantity}; must be 1..={MAX_EVENT_QUANTITY}"),
        ));
    }
    Ok(())
}

/// Checks a hold lifetime in milliseconds: [`MIN_TTL_MS`]..=[`MAX_TTL_MS`].
pub fn validate_ttl_ms(field: &str, ttl_ms: i64) -> Result<(), FieldViolation> {
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(FieldViolation::new(
            field,
            format!(
                "is {} s; must be {}..={} s",
                ttl_ms / 1000,
                MIN_TTL_MS / 1000,
                MAX_TTL_MS / 1000
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_control() {
        assert!(Sku::parse("sku", "").is_err());
        assert!(Sku::parse("sku", &"x".repeat(MAX_ID_BYTES)).is_ok());
        let long = Sku::parse("sku", &"x".repeat(MAX_ID_BYTES + 1)).unwrap_err();
        assert_eq!(long.field, "sku");
        assert!(Sku::parse("sku", "a\nb").is_err());
        assert!(Sku::parse("sku", "tee-ß-42").is_ok());
    }

    #[test]
    fn ids_reject_invisible_and_bidirectional_characters() {
        let cases = [
            ("zero width space", "tee\u{200B}"),
            ("right-to-left override", "dc-\u{202E}1"),
            ("left-to-right isolate", "\u{2066}dc-1"),
            ("zero width joiner", "a\u{200D}b"),
            ("byte order mark", "\u{FEFF}sku"),
            ("soft hyphen", "t\u{00AD}ee"),
            ("line separator", "a\u{2028}b"),
            ("tag character", "a\u{E0041}"),
        ];
        for (case, id) in cases {
            let violation = Sku::parse("lines[0].sku", id).expect_err(case);
            assert_eq!(violation.field, "lines[0].sku", "{case}");
            assert!(violation.description.contains("invisible"), "{case}: {violation:?}");
        }
        let violation = Sku::parse("sku", "dc-\u{202E}1").expect_err("override");
        assert!(violation.description.contains("U+202E at byte 3"), "{violation:?}");
        // Visible letters of any script, and spaces, stay allowed.
        for id in ["東京-倉庫", "склад-1", "مخزن", "dc 1", "tee-ß-42", "ñandú"] {
            assert!(Sku::parse("sku", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn ids_must_be_nfc() {
        let composed = "caf\u{E9}";
        let decomposed = "cafe\u{301}";
        assert!(Sku::parse("sku", composed).is_ok());
        let violation = Sku::parse("sku", decomposed).expect_err("NFD is refused");
        assert!(violation.description.contains("NFC"), "{violation:?}");
        // Hangul jamo sequences compose under NFC, so the decomposed form is refused.
        assert!(Sku::parse("sku", "\u{1100}\u{1161}").is_err());
        assert!(Sku::parse("sku", "\u{AC00}").is_ok());
    }

    #[test]
    fn quantities_and_ttls_have_bounds() {
        assert!(validate_line_quantity("q", 0).is_err());
        assert!(validate_line_quantity("q", -1).is_err());
        assert!(validate_line_quantity("q", MAX_LINE_QUANTITY + 1).is_err());
        assert!(validate_line_quantity("q", 1).is_ok());
        assert!(validate_ttl_ms("ttl", 999).is_err());
        assert!(validate_ttl_ms("ttl", MAX_TTL_MS).is_ok());
        assert!(validate_ttl_ms("ttl", MAX_TTL_MS + 1).is_err());
    }
}
