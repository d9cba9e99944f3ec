//! Medians, percentiles and spreads of small samples.

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values
}

/// The middle value (the mean of the two middle ones for an even count); NaN if empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let values = sorted(values);
    match values.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile (`p` in 0..=100): the smallest sample with at least p% of the
/// samples at or below it, so p99 of fewer than 100 samples is their maximum. NaN if empty.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let values = sorted(values);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

pub(crate) fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

pub(crate) fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// (max - min) / median: how far apart repeated measurements of the same thing land.
pub(crate) fn relative_range(values: &[f64]) -> f64 {
    (max(values) - min(values)) / median(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&[5.0, 1.0, 9.0], 99.0), 9.0);
        assert_eq!(percentile(&[5.0, 1.0, 9.0], 0.0), 1.0);
        assert_eq!(min(&[2.0, 1.0]), 1.0);
        assert_eq!(max(&[2.0, 1.0]), 2.0);
        assert_eq!(relative_range(&[9.0, 10.0, 11.0]), 0.2);
    }
}
