//! Memory sizes: the budget of the frozen cache (`--cache-budget`), how much memory is free, and
//! sizes written for people (`1.5 GB`) and read from them (`512M`, `4G`, `4GiB`).

use anyhow::{Result, bail};

/// The share of available memory the frozen cache may take by default.
pub const DEFAULT_SHARE: f64 = 0.5;

/// Fallback budget where available memory cannot be read (not Linux).
const FALLBACK_BUDGET: u64 = 4 << 30;

/// Bytes of memory available to a new allocation now (Linux `MemAvailable`), if known.
pub fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default budget of the frozen cache: half the memory available when the run starts
/// (4 GiB where that cannot be read).
pub fn default_cache_budget() -> u64 {
    available().map_or(FALLBACK_BUDGET, |a| (a as f64 * DEFAULT_SHARE) as u64)
}

/// Reads a size: a number of bytes, or one with a unit `K`, `M`, `G`, `T` (powers of 1024;
/// `KB`/`KiB` and lower case accepted), e.g. `512M`, `4G`, `1.5GiB`.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Ok(value) = number.parse::<f64>() else {
        bail!("`{text}` is not a size: give bytes or a number with K, M, G or T (e.g. 512M, 4G)");
    };
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        other => bail!("`{text}`: unknown unit `{other}` (use K, M, G or T, e.g. 512M, 4G)"),
    };
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// `bytes` for people: `512 B`, `1.5 KB`, `12.3 MB`, `4.0 GB` (powers of 1024).
pub fn human(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5kb").unwrap(), 1536);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4Q").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KB");
        assert_eq!(human(3 << 30), "3.0 GB");
    }
}
