//! `--plot out.svg`: the main latency over time (p50, p99, max per timeline bucket)
//! above its cumulative distribution. Pure SVG: text is emitted as `<text>` elements,
//! so no font library is needed.

use std::path::Path;

use plotters::prelude::*;

use crate::hist::LatencyHistogram;
use crate::report::Report;

/// Draws the plot for `report`, whose main latency distribution is `histogram`.
pub fn draw(path: &Path, report: &Report, histogram: &LatencyHistogram) -> Result<(), String> {
    draw_inner(path, report, histogram).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_inner(
    path: &Path,
    report: &Report,
    histogram: &LatencyHistogram,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(400);
    let what = report.config.main_latency.name();
    let title = format!(
        "{} · {} latency · {} connections · {}",
        report.scenario.name(),
        what,
        report.connections.established,
        report.config.url
    );

    let points = &report.timeline.points;
    let t_max = points.iter().map(|p| p[0]).fold(0.0f64, f64::max).max(1.0)
        + report.timeline.bucket_ms / 1000.0;
    let y_max = points
        .iter()
        .map(|p| p[3])
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency (ms)")
        .draw()?;
    for (column, label, color) in [(1, "p50", BLUE), (2, "p99", RED), (3, "max", BLACK)] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p[0], p[column])),
                color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let cdf = histogram.cdf_ms();
    let x_min = cdf.first().map_or(0.001, |p| p.0).max(0.001);
    let x_max = cdf.last().map_or(1.0, |p| p.0).max(x_min * 10.0);
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            format!("{what} latency CDF (n={})", histogram.len()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .x_label_formatter(&|v| short_number(*v))
        .x_desc("latency (ms, log scale)")
        .y_desc("percent of samples ≤ x")
        .draw()?;
    chart.draw_series(LineSeries::new(
        cdf.iter().map(|(x, q)| (x.max(x_min), q * 100.0)),
        BLUE,
    ))?;
    root.present()?;
    Ok(())
}

/// `0.30000000000000004` → `0.3`, `1200.0` → `1200`: axis labels without float noise.
fn short_number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_lose_float_noise() {
        assert_eq!(short_number(0.300_000_000_000_000_04), "0.3");
        assert_eq!(short_number(1200.0), "1200");
        assert_eq!(short_number(0.0001), "0");
        assert_eq!(short_number(0.125), "0.125");
    }
}
