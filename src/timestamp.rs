//! UTC timestamps as RFC 3339 strings (`2026-11-25T17:57:18Z`), the form every file and reply uses.
//!
//! Owns the conversion from `SystemTime` to text and back; it must not read the clock itself except in
//! [`now`], so that pure code can take time as an argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time as an RFC 3339 UTC string with second precision.
pub(crate) fn now() -> String {
    format(SystemTime::now())
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whole seconds from the RFC 3339 time `then` until now (`None` if it does not parse).
pub(crate) fn seconds_since(then: &str) -> Option<u64> {
    let then = parse(then)?;
    Some(
        SystemTime::now()
            .duration_since(then)
            .unwrap_or(Duration::ZERO)
            .as_secs(),
    )
}

/// The time `span` ago, as [`now`] writes it.
pub(crate) fn ago(span: Duration) -> String {
    format(SystemTime::now().checked_sub(span).unwrap_or(UNIX_EPOCH))
}

/// A span written as a number and a unit: `90s`, `30m`, `12h`, `7d` (a bare number is seconds).
pub(crate) fn parse_span(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn format(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses the forms this program and the Python original wrote: `YYYY-MM-DDTHH:MM:SS[.frac][Z]`.
/// A timestamp without a zone is read as UTC (the original wrote naive `utcnow()` values).
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim().trim_end_matches('Z');
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let time = time.split(['.', '+']).next()?;
    let mut time_parts = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (
        time_parts.next()??,
        time_parts.next()??,
        time_parts.next()??,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_seconds_minutes_hours_and_days() {
        assert_eq!(parse_span("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_span("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_span("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_span("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_span("7w"), None);
        assert_eq!(parse_span("-1h"), None);
        assert_eq!(parse_span(""), None);
    }

    #[test]
    fn formats_and_parses_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_527_796);
        let text = format(t);
        assert_eq!(text, "2026-11-24T13:43:16Z");
        assert_eq!(parse(&text), Some(t));
    }

    #[test]
    fn parses_the_original_naive_microsecond_form() {
        let t = parse("2026-01-28T10:30:00.123456").expect("parses");
        assert_eq!(format(t), "2026-01-28T10:30:00Z");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("2026-13-01T00:00:00Z"), None);
    }
}
