//! Durations as `500ms`, `30s`, `5m`, `1h30m`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error};

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has a number without a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("`{text}` is not a duration like 30s, 5m or 1h30m"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value * 60),
            "h" => Duration::from_secs(value * 3600),
            other => {
                return Err(format!("`{text}` has unit `{other}`; use ms, s, m or h"));
            }
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map(Some).map_err(D::Error::custom)
}
