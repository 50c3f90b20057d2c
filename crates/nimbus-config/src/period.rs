//! Calendar periods (UTC) that quotas count in.

use crate::QuotaPeriod;

impl QuotaPeriod {
    /// The period containing `now` (Unix seconds, UTC): its id (`2026-11-25` or `2026-11`), start
    /// and end.
    pub fn bounds(self, now: u64) -> (String, u64, u64) {
        let day = now / 86_400;
        let (y, m, d) = civil_from_days(day as i64);
        match self {
            QuotaPeriod::Day => (format!("{y:04}-{m:02}-{d:02}"), day * 86_400, (day + 1) * 86_400),
            QuotaPeriod::Month => {
                let start = (day as i64 - (d as i64 - 1)) as u64 * 86_400;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1) as u64 * 86_400;
                (format!("{y:04}-{m:02}"), start, end)
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-25T09:16:32Z
        let now = 1_795_598_192;
        assert_eq!(civil_from_days((now / 86_400) as i64), (2026, 11, 25));
        let (id, start, end) = QuotaPeriod::Day.bounds(now);
        assert_eq!((id.as_str(), end - start), ("2026-11-25", 86_400));
        let (id, start, end) = QuotaPeriod::Month.bounds(now);
        assert_eq!((id.as_str(), (end - start) / 86_400), ("2026-11", 30));
        assert_eq!(civil_from_days(start as i64 / 86_400), (2026, 11, 1));
        let dec = days_from_civil(2026, 12, 31) as u64 * 86_400;
        let (id, _, end) = QuotaPeriod::Month.bounds(dec);
        assert_eq!((id.as_str(), civil_from_days(end as i64 / 86_400)), ("2026-12", (2027, 1, 1)));
        let leap = days_from_civil(2028, 2, 10) as u64 * 86_400;
        let (_, start, end) = QuotaPeriod::Month.bounds(leap);
        assert_eq!((end - start) / 86_400, 29);
        for day in [-1000, 0, 59, 60, 365, 11_000, 20_000, 200_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }
}
