//! Line charts drawn as inline SVG on the server: a trigger's last hour, one point a minute.
//! No chart library: the page needs two kinds of line over sixty points, the SVG scales with
//! the page, refreshes with the fragment it is part of and is read by a screen reader through
//! its title and table-free summary.

use std::fmt::Write;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// One line: its name (in the legend), its CSS class (its colour) and a value per point
/// (`None` draws a gap).
pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) class: &'static str,
    pub(crate) points: Vec<Option<f64>>,
}

/// An SVG chart of `series` over the last hour, values in `unit`; `title` names it for
/// screen readers. Every text in it is the caller's constant or a number.
pub(crate) fn line_chart(title: &str, unit: &str, series: &[Series]) -> String {
    let top = nice_ceiling(
        series
            .iter()
            .flat_map(|series| series.points.iter().flatten())
            .fold(0.0_f64, |max, value| max.max(*value)),
    );
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}, last hour"><title>{title}, last hour</title>"#
    );
    for fraction in [0.0, 0.5, 1.0] {
        let y = y_of(top * fraction, top);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{WIDTH}" y2="{y:.1}"/><text class="axis" x="{x:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x = LEFT - 4.0,
            ty = y + 4.0,
            label = format_value(top * fraction, unit),
        );
    }
    let _ = write!(
        svg,
        r#"<text class="axis" x="{LEFT}" y="{y}">−60 min</text><text class="axis" x="{WIDTH}" y="{y}" text-anchor="end">now</text>"#,
        y = HEIGHT - 4.0
    );
    for line in series {
        for segment in segments(&line.points, top) {
            let _ = write!(
                svg,
                r#"<polyline class="line {}" points="{segment}"/>"#,
                line.class
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The legend of `series`, as HTML.
pub(crate) fn legend(series: &[Series]) -> String {
    let mut html = String::from(r#"<ul class="legend">"#);
    for line in series {
        let _ = write!(
            html,
            r#"<li><span class="swatch {}"></span>{}</li>"#,
            line.class, line.name
        );
    }
    html.push_str("</ul>");
    html
}

fn y_of(value: f64, top: f64) -> f64 {
    let plot = HEIGHT - BOTTOM - TOP;
    TOP + plot - (value / top) * plot
}

/// The `points` attributes of the unbroken runs of values.
fn segments(points: &[Option<f64>], top: f64) -> Vec<String> {
    let step = (WIDTH - LEFT) / (points.len().max(2) - 1) as f64;
    let mut segments = Vec::new();
    let mut current = String::new();
    for (index, point) in points.iter().enumerate() {
        match point {
            Some(value) => {
                let _ = write!(
                    current,
                    "{:.1},{:.1} ",
                    LEFT + index as f64 * step,
                    y_of(*value, top)
                );
            }
            None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `max` (1 for an empty chart).
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|ceiling| *ceiling >= max)
        .unwrap_or(10.0 * magnitude)
}

fn format_value(value: f64, unit: &str) -> String {
    if value >= 1000.0 {
        format!("{:.0}k{unit}", value / 1000.0)
    } else if value >= 10.0 || value == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_rounds_up_to_a_readable_step() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn gaps_break_the_line() {
        let points = vec![Some(1.0), Some(2.0), None, Some(3.0)];
        assert_eq!(segments(&points, 4.0).len(), 2);
        let svg = line_chart(
            "Throughput",
            "",
            &[Series {
                name: "succeeded",
                class: "ok",
                points,
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
