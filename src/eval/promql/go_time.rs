//! The UTC calendar as Go's `time` package computes it (`Time.abs`, `absDate`,
//! `absClock`, `absWeekday` of Go 1.19), for PromQL's date functions. A port rather
//! than a calendar crate because Prometheus feeds these functions whatever a float
//! converts to, and Go's arithmetic on absurd times (a NaN's date, years beyond
//! ±292 billion) wraps in its own way: matching it keeps every answer Prometheus's.

/// Seconds in a day and a week.
const SECONDS_PER_DAY: u64 = 86_400;
const SECONDS_PER_WEEK: u64 = 7 * SECONDS_PER_DAY;
const DAYS_PER_400_YEARS: u64 = 365 * 400 + 97;
const DAYS_PER_100_YEARS: u64 = 365 * 100 + 24;
const DAYS_PER_4_YEARS: u64 = 365 * 4 + 1;
/// Go's "absolute" calendar starts in this year, so that every date is a positive
/// count of seconds.
const ABSOLUTE_ZERO_YEAR: i64 = -292_277_022_399;
/// Go's `unixToInternal + internalToAbsolute`: the absolute time of the Unix epoch.
const UNIX_TO_ABSOLUTE: i64 = {
    let internal_year = 1i64;
    // (absoluteZeroYear - internalYear) * 365.2425 * secondsPerDay, as Go's constant
    // arithmetic computes it exactly.
    // (In i128: the product overflows i64 before the division brings it back.)
    let absolute_to_internal =
        ((ABSOLUTE_ZERO_YEAR - internal_year) as i128 * 3_652_425 * 86_400 / 10_000) as i64;
    let unix_to_internal = (1969 * 365 + 1969 / 4 - 1969 / 100 + 1969 / 400) * 86_400;
    unix_to_internal - absolute_to_internal
};
/// Days before each month of a non-leap year (Go's `daysBefore`).
const DAYS_BEFORE: [u32; 13] = [
    0,
    31,
    31 + 28,
    31 + 28 + 31,
    31 + 28 + 31 + 30,
    31 + 28 + 31 + 30 + 31,
    31 + 28 + 31 + 30 + 31 + 30,
    31 + 28 + 31 + 30 + 31 + 30 + 31,
    31 + 28 + 31 + 30 + 31 + 30 + 31 + 31,
    31 + 28 + 31 + 30 + 31 + 30 + 31 + 31 + 30,
    31 + 28 + 31 + 30 + 31 + 30 + 31 + 31 + 30 + 31,
    31 + 28 + 31 + 30 + 31 + 30 + 31 + 31 + 30 + 31 + 30,
    365,
];

/// A UTC date and time of day, each part as Go's `time.Time` methods return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Date {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 1 to 366 (`YearDay`).
    pub year_day: u32,
    /// 0 (Sunday) to 6.
    pub weekday: u32,
    pub hour: u32,
    pub minute: u32,
}

impl Date {
    /// The UTC date of `seconds` after the Unix epoch (`time.Unix(seconds, 0).UTC()`).
    pub fn of_unix(seconds: i64) -> Self {
        // Go converts with wrapping arithmetic.
        let abs = seconds.wrapping_add(UNIX_TO_ABSOLUTE) as u64;
        let (year, month, day, year_day) = abs_date(abs);
        let in_day = abs % SECONDS_PER_DAY;
        // January 1 of the absolute year was a Monday.
        let weekday = ((abs.wrapping_add(SECONDS_PER_DAY)) % SECONDS_PER_WEEK) / SECONDS_PER_DAY;
        Self {
            year,
            month,
            day,
            year_day: year_day + 1,
            weekday: weekday as u32,
            hour: (in_day / 3600) as u32,
            minute: (in_day % 3600 / 60) as u32,
        }
    }

    /// Days in this date's month.
    pub fn days_in_month(&self) -> u32 {
        if self.month == 2 && is_leap(self.year) {
            return 29;
        }
        let m = self.month as usize;
        DAYS_BEFORE[m] - DAYS_BEFORE[m - 1]
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Go's `absDate(abs, true)`: year, month (1-12), day (1-31) and zero-based day of year.
fn abs_date(abs: u64) -> (i64, u32, u32, u32) {
    let mut d = abs / SECONDS_PER_DAY;
    // 400-year cycles.
    let mut n = d / DAYS_PER_400_YEARS;
    let mut y = 400 * n;
    d -= DAYS_PER_400_YEARS * n;
    // 100-year cycles; the last one is a day longer, hence n >> 2.
    n = d / DAYS_PER_100_YEARS;
    n -= n >> 2;
    y += 100 * n;
    d -= DAYS_PER_100_YEARS * n;
    // 4-year cycles.
    n = d / DAYS_PER_4_YEARS;
    y += 4 * n;
    d -= DAYS_PER_4_YEARS * n;
    // Years within a 4-year cycle; the last one is a leap year.
    n = d / 365;
    n -= n >> 2;
    y += n;
    d -= 365 * n;

    let year = (y as i64).wrapping_add(ABSOLUTE_ZERO_YEAR);
    let year_day = d as u32;
    let mut day = year_day;
    if is_leap(year) {
        if day > 31 + 29 - 1 {
            // After the leap day: pretend it was not there.
            day -= 1;
        } else if day == 31 + 29 - 1 {
            return (year, 2, 29, year_day);
        }
    }
    // Estimate the month as if every month had 31 days; it may be one too low.
    let mut month = (day / 31) as usize;
    let end = DAYS_BEFORE[month + 1];
    let begin = if day >= end {
        month += 1;
        end
    } else {
        DAYS_BEFORE[month]
    };
    (year, month as u32 + 1, day - begin + 1, year_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_agree_with_the_calendar() {
        // 2024-02-29T13:45:00Z, a Thursday, the 60th day of a leap year.
        let d = Date::of_unix(1_709_214_300);
        assert_eq!(
            (
                d.year, d.month, d.day, d.year_day, d.weekday, d.hour, d.minute
            ),
            (2024, 2, 29, 60, 4, 13, 45)
        );
        assert_eq!(d.days_in_month(), 29);
        // The epoch was a Thursday; the second before it a Wednesday in 1969.
        let epoch = Date::of_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 4)
        );
        let before = Date::of_unix(-1);
        assert_eq!(
            (
                before.year,
                before.month,
                before.day,
                before.weekday,
                before.hour
            ),
            (1969, 12, 31, 3, 23)
        );
        assert_eq!(Date::of_unix(1_700_000_000).days_in_month(), 30);
    }
}
