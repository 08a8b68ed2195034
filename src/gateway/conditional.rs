//! Ranges and preconditions of GET and HEAD, read from the raw headers (RFC 9110 and S3).
//!
//! s3s parses these itself, but answers 400 to several ranges or another unit (HTTP says to
//! ignore such a Range and send the whole object) and mis-parses ETag lists, so the read path
//! reads the raw headers with the functions here.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// A byte range as the client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// The one byte range of a `Range` header, or `None` where HTTP says to ignore the header and
/// send the whole object: several ranges, another unit, or a malformed value.
pub fn parse_range(value: &str) -> Option<RangeSpec> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(number(last)?)),
        (false, true) => Some(RangeSpec::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
        (true, true) => None,
    }
}

impl RangeSpec {
    /// The bytes of an object of `size` bytes this range selects, or `None` when it is not
    /// satisfiable (416): it starts at or after the end, or asks for the last 0 bytes.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        let range = match self {
            RangeSpec::FromTo(a, b) => a..b.saturating_add(1).min(size),
            RangeSpec::From(a) => a..size,
            RangeSpec::Suffix(n) => size.saturating_sub(n)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

/// What an object's preconditions say to do with a GET or HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it (and honour the Range header if `use_range`).
    Serve {
        /// False when an If-Range did not match: send the whole object.
        use_range: bool,
    },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// Whether an ETag list (`*`, or `"a", W/"b"`) matches `etag`; weak tags compare by their value
/// (RFC 9110's weak comparison, which S3 uses for If-None-Match; If-Match tags are strong in
/// practice). Unquoted tags, which some clients send, are accepted.
fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).filter(|t| !t.is_empty()).any(|tag| {
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag.trim_matches('"') == etag
    })
}

/// An HTTP date, if the value is one.
fn http_date(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value.trim()).ok()
}

/// A time at the resolution of HTTP dates (whole seconds): what HEAD shows, so listings show it
/// too.
pub fn whole_seconds(time: SystemTime) -> SystemTime {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A header's value as text, if present and readable.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since and If-Range
/// against an object with `etag` (unquoted) and `last_modified`, in RFC 9110's order (§13.2.2):
/// If-Unmodified-Since only without If-Match, If-Modified-Since only without If-None-Match.
/// Unparsable dates are ignored, as RFC 9110 says.
pub fn evaluate(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> Verdict {
    let modified = whole_seconds(last_modified);
    if let Some(list) = header(headers, "if-match") {
        if !etag_list_matches(list, etag) {
            return Verdict::PreconditionFailed;
        }
    } else if let Some(date) = header(headers, "if-unmodified-since").and_then(http_date)
        && modified > date
    {
        return Verdict::PreconditionFailed;
    }
    if let Some(list) = header(headers, "if-none-match") {
        if etag_list_matches(list, etag) {
            return Verdict::NotModified;
        }
    } else if let Some(date) = header(headers, "if-modified-since").and_then(http_date)
        && modified <= date
    {
        return Verdict::NotModified;
    }
    let use_range = match header(headers, "if-range") {
        None => true,
        Some(value) => match http_date(value) {
            Some(date) => date == modified,
            None => value.trim().starts_with('"') && value.trim().trim_matches('"') == etag,
        },
    };
    Verdict::Serve { use_range }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeSpec::FromTo(0, 9)));
        assert_eq!(parse_range("bytes=10-"), Some(RangeSpec::From(10)));
        assert_eq!(parse_range("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(parse_range(" bytes= 3 - 4 "), Some(RangeSpec::FromTo(3, 4)));
        // Ignored: several ranges, other units, nonsense.
        for ignored in
            ["bytes=0-1,3-4", "items=0-1", "bytes=5-4", "bytes=-", "bytes=a-b", "bytes=+1-2", "0-1"]
        {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
        assert_eq!(parse_range("bytes=99999999999999999999999-"), None);
    }

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(RangeSpec::FromTo(0, 9).resolve(5), Some(0..5));
        assert_eq!(RangeSpec::FromTo(2, 2).resolve(5), Some(2..3));
        assert_eq!(RangeSpec::FromTo(5, 9).resolve(5), None);
        assert_eq!(RangeSpec::From(4).resolve(5), Some(4..5));
        assert_eq!(RangeSpec::From(5).resolve(5), None);
        assert_eq!(RangeSpec::Suffix(2).resolve(5), Some(3..5));
        assert_eq!(RangeSpec::Suffix(9).resolve(5), Some(0..5));
        assert_eq!(RangeSpec::Suffix(0).resolve(5), None);
        assert_eq!(RangeSpec::From(0).resolve(0), None);
        assert_eq!(RangeSpec::FromTo(0, u64::MAX).resolve(3), Some(0..3));
    }

    #[test]
    fn preconditions_follow_rfc_9110() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |secs: i64| {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs((1_700_000_000 + secs) as u64))
        };
        let serve = Verdict::Serve { use_range: true };
        assert_eq!(evaluate(&headers(&[]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-match", "\"e\"")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-match", "\"x\", \"e\"")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-match", "*")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-match", "e")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-match", "\"x\"")]), "e", t), Verdict::PreconditionFailed);
        assert_eq!(evaluate(&headers(&[("if-none-match", "\"e\"")]), "e", t), Verdict::NotModified);
        assert_eq!(evaluate(&headers(&[("if-none-match", "W/\"e\"")]), "e", t), Verdict::NotModified);
        assert_eq!(evaluate(&headers(&[("if-none-match", "*")]), "e", t), Verdict::NotModified);
        assert_eq!(evaluate(&headers(&[("if-none-match", "\"x\"")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-modified-since", &at(0))]), "e", t), Verdict::NotModified);
        assert_eq!(evaluate(&headers(&[("if-modified-since", &at(-1))]), "e", t), serve);
        assert_eq!(
            evaluate(&headers(&[("if-unmodified-since", &at(-1))]), "e", t),
            Verdict::PreconditionFailed
        );
        assert_eq!(evaluate(&headers(&[("if-unmodified-since", &at(0))]), "e", t), serve);
        // If-Match wins over If-Unmodified-Since, If-None-Match over If-Modified-Since.
        let both = headers(&[("if-match", "\"e\""), ("if-unmodified-since", &at(-10))]);
        assert_eq!(evaluate(&both, "e", t), serve);
        let both = headers(&[("if-none-match", "\"x\""), ("if-modified-since", &at(10))]);
        assert_eq!(evaluate(&both, "e", t), serve);
        // A failed If-Match is 412 even when If-None-Match would say 304.
        let both = headers(&[("if-match", "\"x\""), ("if-none-match", "\"e\"")]);
        assert_eq!(evaluate(&both, "e", t), Verdict::PreconditionFailed);
        // Unparsable dates are ignored.
        assert_eq!(evaluate(&headers(&[("if-modified-since", "yesterday")]), "e", t), serve);
        // If-Range: a matching strong ETag or exact date keeps the range, anything else drops it.
        let whole = Verdict::Serve { use_range: false };
        assert_eq!(evaluate(&headers(&[("if-range", "\"e\"")]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-range", "\"x\"")]), "e", t), whole);
        assert_eq!(evaluate(&headers(&[("if-range", "W/\"e\"")]), "e", t), whole);
        assert_eq!(evaluate(&headers(&[("if-range", &at(0))]), "e", t), serve);
        assert_eq!(evaluate(&headers(&[("if-range", &at(1))]), "e", t), whole);
        // Sub-second times compare at the second.
        let later = t + Duration::from_millis(700);
        assert_eq!(evaluate(&headers(&[("if-modified-since", &at(0))]), "e", later), Verdict::NotModified);
    }
}
