//! SVG latency-percentile plot, written as plain SVG text.
//!
//! The x axis is the percentile on a log scale of 1 / (1 - p), so 90 %,
//! 99 %, 99.9 % ... are evenly spaced; the y axis is latency in microseconds.

use std::fmt::Write as _;

use crate::report::PercentilePoint;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 60.0;

/// Highest percentile on the x axis: 99.999 %, where 1 / (1 - p) is 10^5.
const X_DECADES: f64 = 5.0;

/// Line colours of successive series.
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Renders one curve per `(name, points)` series.
pub fn latency_svg(title: &str, series: &[(String, Vec<PercentilePoint>)]) -> String {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let max_latency = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.latency_us))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(max_latency.max(1.0));

    let x_of = |percentile: f64| {
        let tail = (1.0 - percentile / 100.0).max(10f64.powf(-X_DECADES));
        MARGIN_LEFT + (-tail.log10() / X_DECADES) * plot_width
    };
    let y_of = |latency: f64| MARGIN_TOP + plot_height * (1.0 - latency / y_max);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    for decade in 0..=X_DECADES as u32 {
        let percentile = 100.0 * (1.0 - 10f64.powi(-(decade as i32)));
        let x = x_of(percentile);
        let label = match decade {
            0 => "0%".to_string(),
            _ => format!("{}%", trim_percent(percentile)),
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            MARGIN_TOP + plot_height,
            MARGIN_TOP + plot_height + 18.0
        );
    }
    for step in 0..=5 {
        let latency = y_max * f64::from(step) / 5.0;
        let y = y_of(latency);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT + plot_width,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            format_axis(latency)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (us)</text>"#,
        MARGIN_TOP + plot_height / 2.0,
        MARGIN_TOP + plot_height / 2.0
    );

    for (index, (name, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p.percentile), y_of(p.latency_us)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let legend_y = MARGIN_TOP + 16.0 + 18.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            MARGIN_LEFT + 10.0,
            MARGIN_LEFT + 30.0,
            MARGIN_LEFT + 36.0,
            legend_y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Rounds up to 1, 2 or 5 times a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    for factor in [1.0, 2.0, 5.0, 10.0] {
        if value <= factor * magnitude {
            return factor * magnitude;
        }
    }
    10.0 * magnitude
}

fn trim_percent(percentile: f64) -> String {
    let text = format!("{percentile:.5}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn format_axis(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(percentile: f64, latency_us: f64) -> PercentilePoint {
        PercentilePoint {
            percentile,
            latency_us,
        }
    }

    #[test]
    fn svg_has_one_line_per_series() {
        let series = vec![
            (
                "coremq".to_string(),
                vec![point(0.0, 10.0), point(99.0, 50.0), point(100.0, 80.0)],
            ),
            (
                "a<b".to_string(),
                vec![point(0.0, 20.0), point(99.9, 300.0)],
            ),
        ];
        let svg = latency_svg("fanout", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("99.9%"));
        assert!(svg.contains("99.999%"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(400.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(5001.0), 10000.0);
    }
}
