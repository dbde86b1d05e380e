//! libvirt's memory units.

/// Converts `value` in `unit` to KiB, rounding up as libvirt does.
/// `None` for an unknown unit or an overflow.
pub fn to_kib(value: u64, unit: Option<&str>) -> Option<u64> {
    let bytes_per: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "E" | "EiB" => 1 << 60,
        _ => return None,
    };
    let bytes = value.checked_mul(bytes_per)?;
    Some(bytes.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_to_kib() {
        assert_eq!(to_kib(128, Some("MiB")), Some(131_072));
        assert_eq!(to_kib(131_072, None), Some(131_072));
        assert_eq!(to_kib(1, Some("GB")), Some(976_563));
        assert_eq!(to_kib(1, Some("b")), Some(1));
        assert_eq!(to_kib(1, Some("furlong")), None);
        assert_eq!(to_kib(u64::MAX, Some("EiB")), None);
    }
}
