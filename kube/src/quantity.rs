//! Storage sizes as Kubernetes writes them (`10Gi`, `500M`, `1.5Ti`, `1e9`), in bytes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Bytes of a quantity; `None` when it is not one Kubernetes would accept as a size.
#[must_use]
pub fn bytes(quantity: &Quantity) -> Option<u64> {
    let text = quantity.0.trim();
    // `E` is both exa and the exponent's letter; an exponent is followed by digits.
    let split = if text.ends_with('E') {
        text.len() - 1
    } else {
        text.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(text.len())
    };
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let bytes = (value * multiplier).ceil();
    (value >= 0.0 && bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The quantity for `bytes`: whole GiB or MiB where exact, else bytes.
#[must_use]
pub fn of_bytes(bytes: u64) -> Quantity {
    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;
    Quantity(if bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else if bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_forms_kubernetes_writes() {
        let q = |s: &str| bytes(&Quantity(s.to_owned()));
        assert_eq!(q("10Gi"), Some(10 << 30));
        assert_eq!(q("1.5Gi"), Some(3 << 29));
        assert_eq!(q("500M"), Some(500_000_000));
        assert_eq!(q("1e9"), Some(1_000_000_000));
        assert_eq!(q("2E"), Some(2_000_000_000_000_000_000));
        assert_eq!(q("1000m"), Some(1));
        assert_eq!(q("123"), Some(123));
        for bad in ["", "Gi", "10 Gi", "10GB", "-1Gi", "ten"] {
            assert_eq!(q(bad), None, "{bad}");
        }
    }

    #[test]
    fn writes_whole_units_where_exact() {
        assert_eq!(of_bytes(10 << 30).0, "10Gi");
        assert_eq!(of_bytes(1536 << 20).0, "1536Mi");
        assert_eq!(of_bytes(1000).0, "1000");
    }
}
