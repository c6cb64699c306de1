//! KubeOS `timewindow`: when new nodes may start.
//!
//! Forms as in KubeOS `cmd/operator/controllers/times.go`: both ends `HH:MM:SS` (every day; an
//! end before the start crosses midnight) or both `YYYY-MM-DD HH:MM:SS` (once; an end before the
//! start gets 24 hours added, as KubeOS does), both empty for "always". KubeOS read the clock in
//! the operator's local zone; here the zone is named in `timezone`: `UTC` (default), `Z`, or a
//! fixed offset `+HH:MM`/`-HH:MM`. Named zones with daylight saving (`Europe/Berlin`) would need a
//! tz database in the operator image and make the decision depend on it; they are refused with
//! a clear error instead. The window is half-open: `[start, end)`.

use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

use crate::crd::TimeWindow;

const DAY: i64 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Window {
    Always,
    /// Seconds of the local day, and the zone's offset from UTC in seconds.
    Daily {
        start: i64,
        end: i64,
        offset: i64,
    },
    Once {
        start: Timestamp,
        end: Timestamp,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowError {
    OneEndEmpty,
    BadTime(String),
    MixedForms { start: String, end: String },
    EmptyDailyWindow(String),
    BadTimezone(String),
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::OneEndEmpty => {
                write!(
                    f,
                    "timewindow: starttime and endtime must both be set or both be empty"
                )
            }
            WindowError::BadTime(t) => write!(
                f,
                "timewindow: {t:?} is neither HH:MM:SS nor YYYY-MM-DD HH:MM:SS"
            ),
            WindowError::MixedForms { start, end } => write!(
                f,
                "timewindow: starttime {start:?} and endtime {end:?} must use the same form"
            ),
            WindowError::EmptyDailyWindow(t) => {
                write!(
                    f,
                    "timewindow: starttime and endtime are both {t:?}, the window is empty"
                )
            }
            WindowError::BadTimezone(z) => write!(
                f,
                "timewindow: timezone {z:?} is not UTC, Z or a fixed offset like +08:00 \
                 (named zones are not supported)"
            ),
        }
    }
}

impl std::error::Error for WindowError {}

enum Moment {
    TimeOfDay(i64),
    Civil(DateTime),
}

impl Window {
    pub fn parse(window: Option<&TimeWindow>) -> Result<Window, WindowError> {
        let Some(w) = window else {
            return Ok(Window::Always);
        };
        let offset = parse_timezone(w.timezone.as_deref())?;
        match (w.starttime.is_empty(), w.endtime.is_empty()) {
            (true, true) => return Ok(Window::Always),
            (false, false) => {}
            _ => return Err(WindowError::OneEndEmpty),
        }
        match (parse_moment(&w.starttime)?, parse_moment(&w.endtime)?) {
            (Moment::TimeOfDay(start), Moment::TimeOfDay(end)) if start == end => {
                Err(WindowError::EmptyDailyWindow(w.starttime.clone()))
            }
            (Moment::TimeOfDay(start), Moment::TimeOfDay(end)) => {
                Ok(Window::Daily { start, end, offset })
            }
            (Moment::Civil(start), Moment::Civil(end)) => {
                let zone = TimeZone::fixed(Offset::from_seconds(offset as i32).map_err(|_| {
                    WindowError::BadTimezone(w.timezone.clone().unwrap_or_default())
                })?);
                let to_ts = |dt: DateTime, text: &str| {
                    zone.to_timestamp(dt)
                        .map_err(|_| WindowError::BadTime(text.to_string()))
                };
                let start = to_ts(start, &w.starttime)?;
                let mut end = to_ts(end, &w.endtime)?;
                if end < start {
                    end = Timestamp::from_second(end.as_second() + DAY)
                        .map_err(|_| WindowError::BadTime(w.endtime.clone()))?;
                }
                Ok(Window::Once { start, end })
            }
            _ => Err(WindowError::MixedForms {
                start: w.starttime.clone(),
                end: w.endtime.clone(),
            }),
        }
    }

    pub fn is_open(&self, now: Timestamp) -> bool {
        match *self {
            Window::Always => true,
            Window::Daily { start, end, offset } => {
                let t = (now.as_second() + offset).rem_euclid(DAY);
                if start < end {
                    start <= t && t < end
                } else {
                    t >= start || t < end
                }
            }
            Window::Once { start, end } => start <= now && now < end,
        }
    }

    /// The next instant the window is open at or after `now`; `None` once a one-off window
    /// has passed.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        if self.is_open(now) {
            return Some(now);
        }
        match *self {
            Window::Always => Some(now),
            Window::Daily { start, offset, .. } => {
                let t = (now.as_second() + offset).rem_euclid(DAY);
                Timestamp::from_second(now.as_second() + (start - t).rem_euclid(DAY)).ok()
            }
            Window::Once { start, .. } => (now < start).then_some(start),
        }
    }
}

fn parse_timezone(zone: Option<&str>) -> Result<i64, WindowError> {
    let zone = zone.unwrap_or("").trim();
    if zone.is_empty() || zone.eq_ignore_ascii_case("utc") || zone == "Z" {
        return Ok(0);
    }
    let bad = || WindowError::BadTimezone(zone.to_string());
    let (sign, rest) = match zone.as_bytes()[0] {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m) = (
        two_digits(h).ok_or_else(bad)?,
        two_digits(m).ok_or_else(bad)?,
    );
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn parse_moment(text: &str) -> Result<Moment, WindowError> {
    let bad = || WindowError::BadTime(text.to_string());
    if let Some(secs) = parse_time_of_day(text) {
        return Ok(Moment::TimeOfDay(secs));
    }
    let (date, time) = text.split_once(' ').ok_or_else(bad)?;
    let date_ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !date_ok || parse_time_of_day(time).is_none() {
        return Err(bad());
    }
    DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
        .map(Moment::Civil)
        .map_err(|_| bad())
}

/// `HH:MM:SS` as seconds since midnight.
fn parse_time_of_day(text: &str) -> Option<i64> {
    let mut parts = text.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (h, m, s) = (two_digits(h)?, two_digits(m)?, two_digits(s)?);
    (h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

fn two_digits(text: &str) -> Option<i64> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, zone: Option<&str>) -> Result<Window, WindowError> {
        Window::parse(Some(&TimeWindow {
            starttime: start.into(),
            endtime: end.into(),
            timezone: zone.map(str::to_string),
        }))
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn absent_or_empty_window_is_always_open() {
        assert_eq!(Window::parse(None), Ok(Window::Always));
        assert_eq!(window("", "", None), Ok(Window::Always));
        assert!(Window::Always.is_open(at("2024-01-01T00:00:00Z")));
    }

    #[test]
    fn daily_window_is_half_open() {
        let w = window("01:00:00", "03:00:00", None).unwrap();
        assert!(!w.is_open(at("2024-05-01T00:59:59Z")));
        assert!(w.is_open(at("2024-05-01T01:00:00Z")));
        assert!(w.is_open(at("2024-05-01T02:59:59Z")));
        assert!(!w.is_open(at("2024-05-01T03:00:00Z")));
    }

    #[test]
    fn daily_window_crosses_midnight() {
        let w = window("22:00:00", "02:00:00", None).unwrap();
        assert!(w.is_open(at("2024-05-01T23:30:00Z")));
        assert!(w.is_open(at("2024-05-02T01:59:59Z")));
        assert!(!w.is_open(at("2024-05-02T02:00:00Z")));
        assert!(!w.is_open(at("2024-05-02T12:00:00Z")));
    }

    #[test]
    fn fixed_offset_shifts_the_window() {
        // 01:00-03:00 at +08:00 is 17:00-19:00 UTC the day before.
        let w = window("01:00:00", "03:00:00", Some("+08:00")).unwrap();
        assert!(w.is_open(at("2024-05-01T17:30:00Z")));
        assert!(!w.is_open(at("2024-05-01T01:30:00Z")));
        let w = window("01:00:00", "03:00:00", Some("-05:30")).unwrap();
        assert!(w.is_open(at("2024-05-01T06:30:00Z")));
    }

    #[test]
    fn once_window_uses_dates_and_zone() {
        let w = window("2024-05-01 10:00:00", "2024-05-01 12:00:00", Some("+02:00")).unwrap();
        assert!(!w.is_open(at("2024-05-01T07:59:59Z")));
        assert!(w.is_open(at("2024-05-01T08:00:00Z")));
        assert!(!w.is_open(at("2024-05-01T10:00:00Z")));
        assert_eq!(
            w.next_open(at("2024-05-01T07:00:00Z")),
            Some(at("2024-05-01T08:00:00Z"))
        );
        assert_eq!(w.next_open(at("2024-05-02T00:00:00Z")), None);
    }

    #[test]
    fn once_window_with_end_before_start_gets_a_day_like_kubeos() {
        let w = window("2024-05-01 22:00:00", "2024-05-01 02:00:00", None).unwrap();
        assert!(w.is_open(at("2024-05-02T01:00:00Z")));
    }

    #[test]
    fn next_open_of_a_daily_window() {
        let w = window("01:00:00", "03:00:00", None).unwrap();
        assert_eq!(
            w.next_open(at("2024-05-01T04:00:00Z")),
            Some(at("2024-05-02T01:00:00Z"))
        );
        assert_eq!(
            w.next_open(at("2024-05-01T00:30:00Z")),
            Some(at("2024-05-01T01:00:00Z"))
        );
        assert_eq!(
            w.next_open(at("2024-05-01T02:00:00Z")),
            Some(at("2024-05-01T02:00:00Z"))
        );
    }

    #[test]
    fn malformed_windows_are_refused() {
        assert_eq!(window("01:00:00", "", None), Err(WindowError::OneEndEmpty));
        assert!(matches!(
            window("1:00:00", "03:00:00", None),
            Err(WindowError::BadTime(_))
        ));
        assert!(matches!(
            window("24:00:00", "03:00:00", None),
            Err(WindowError::BadTime(_))
        ));
        assert!(matches!(
            window("2024-13-01 00:00:00", "03:00:00", None),
            Err(WindowError::BadTime(_))
        ));
        assert!(matches!(
            window("2024-05-01 00:00:00", "03:00:00", None),
            Err(WindowError::MixedForms { .. })
        ));
        assert!(matches!(
            window("01:00:00", "01:00:00", None),
            Err(WindowError::EmptyDailyWindow(_))
        ));
        for zone in ["Europe/Berlin", "+8", "+08", "08:00", "+15:00", "+08:60"] {
            assert!(
                matches!(
                    window("01:00:00", "03:00:00", Some(zone)),
                    Err(WindowError::BadTimezone(_))
                ),
                "{zone}"
            );
        }
        for zone in ["UTC", "utc", "Z", "+00:00", "+14:00", "-12:00"] {
            assert!(window("01:00:00", "03:00:00", Some(zone)).is_ok(), "{zone}");
        }
    }
}
