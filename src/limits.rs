//! Resource limits as values: what one Instance may use (memory, CPU, tasks), parsed from the
//! config file and a Project's `.env`. Pure: no IO; enforcing them is `instance::enforce`.

/// A memory limit below this is taken for a unit mistake ("512" meaning 512 MiB).
const MIN_MEMORY: u64 = 1 << 20;

/// Per-instance limits (None = unlimited). Parsed from config / .env values like "2G", "512M",
/// "150%" (cpu), "512" (tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<u32>,
    pub tasks: Option<u32>,
}

impl Limits {
    /// Parses the three settings; an absent or empty value, `none`, `unlimited` or `infinity` means
    /// no limit. Errors name the setting, the value and its problem.
    pub fn parse(
        memory: Option<&str>,
        cpu: Option<&str>,
        tasks: Option<&str>,
    ) -> Result<Limits, String> {
        Ok(Limits {
            memory_bytes: field("memory", memory, |text| match parse_bytes(text)? {
                bytes if bytes < MIN_MEMORY => Err(format!(
                    "{text:?} is below 1M; give a unit, for example {text}M"
                )),
                bytes => Ok(bytes),
            })?,
            cpu_percent: field("cpu", cpu, |text| {
                let digits = text.strip_suffix('%').unwrap_or(text).trim();
                positive(digits, 100_000)
                    .map_err(|why| format!("{text:?} {why} (a percentage of one CPU, like 150%)"))
            })?,
            tasks: field("tasks", tasks, |text| {
                positive(text, u32::MAX).map_err(|why| format!("{text:?} {why}"))
            })?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self == &Limits::default()
    }
}

fn field<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let unset = |v: &str| ["", "none", "unlimited", "infinity"].contains(&&*v.to_lowercase());
    let value = value.map(str::trim).filter(|v| !unset(v));
    value
        .map(|text| parse(text).map_err(|e| format!("{name} limit: {e}")))
        .transpose()
}

fn positive(text: &str, max: u32) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("is more than {max}")),
        Err(_) => Err("is not a whole number".into()),
    }
}

/// Parses a size: a number of bytes, or a number (fractions allowed) with a binary unit
/// `K`, `M`, `G` or `T` (optionally followed by `B` or `iB`, any case): "512M", "1.5G", "2GiB".
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    let bad = || format!("{text:?} is not a size (for example 512M or 2G)");
    let too_big = || format!("{text:?} is too large");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut bytes = whole.checked_mul(1 << shift).ok_or_else(too_big)?;
    if !fraction.is_empty() {
        let tenths: u128 = fraction.parse().map_err(|_| bad())?;
        let extra = (tenths << shift) / 10u128.pow(fraction.len() as u32);
        bytes = u64::try_from(extra)
            .ok()
            .and_then(|extra| bytes.checked_add(extra))
            .ok_or_else(too_big)?;
    }
    match bytes {
        0 => Err(format!("{text:?} must be greater than zero")),
        bytes => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_fractions() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("2 GB", 2 << 30),
            ("1.5G", 3 << 29),
            (".5K", 512),
            ("64K", 64 << 10),
            ("1T", 1 << 40),
            (" 100b ", 100),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for (text, problem) in [
            ("", "not a size"),
            ("G", "not a size"),
            ("1.2.3G", "not a size"),
            ("-1G", "unknown unit"),
            ("12X", "unknown unit \"x\""),
            ("0", "greater than zero"),
            ("0.0M", "greater than zero"),
            ("99999999999T", "too large"),
            ("18446744073709551616", "not a size"),
        ] {
            let err = parse_bytes(text).expect_err(text);
            assert!(err.contains(problem), "{text}: {err}");
        }
    }

    #[test]
    fn limits_parse_each_setting_and_name_the_bad_one() {
        assert_eq!(
            Limits::parse(Some("2G"), Some("150%"), Some("512")),
            Ok(Limits {
                memory_bytes: Some(2 << 30),
                cpu_percent: Some(150),
                tasks: Some(512)
            })
        );
        assert_eq!(
            Limits::parse(None, Some("50"), None).map(|l| l.cpu_percent),
            Ok(Some(50))
        );
        let none = Limits::parse(Some(""), Some("none"), Some("Unlimited")).expect("no limits");
        assert!(none.is_empty());
        assert!(
            !Limits {
                tasks: Some(1),
                ..Limits::default()
            }
            .is_empty()
        );
        for (memory, cpu, tasks, problem) in [
            (Some("512"), None, None, "memory limit: \"512\" is below 1M"),
            (Some("lots"), None, None, "memory limit:"),
            (
                None,
                Some("0%"),
                None,
                "cpu limit: \"0%\" must be greater than zero",
            ),
            (
                None,
                Some("1.5"),
                None,
                "cpu limit: \"1.5\" is not a whole number",
            ),
            (None, Some("200000%"), None, "is more than 100000"),
            (
                None,
                None,
                Some("-3"),
                "tasks limit: \"-3\" is not a whole number",
            ),
            (
                None,
                None,
                Some("0"),
                "tasks limit: \"0\" must be greater than zero",
            ),
        ] {
            let err = Limits::parse(memory, cpu, tasks).expect_err(problem);
            assert!(err.starts_with(problem) || err.contains(problem), "{err}");
        }
    }
}
