//! PNG line charts (plotters, bitmap backend). Text needs a TTF font read at run time,
//! registered once per process, as in `ringcast-bench`.

use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// One line: a label and its points.
pub type Series = (String, Vec<(f64, f64)>);

static FONT: OnceLock<()> = OnceLock::new();

/// Registers the chart font (once per process).
pub fn register_font(font: &Path) -> anyhow::Result<()> {
    if FONT.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(font).map_err(|e| anyhow::anyhow!("cannot read font {}: {e}", font.display()))?;
    // The registry wants 'static bytes; one font per process, so leaking it is fine.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load font {}", font.display()))?;
    let _ = FONT.set(());
    Ok(())
}

/// Axis options.
#[derive(Debug, Clone, Copy)]
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(200, 40, 40),
    RGBColor(40, 90, 200),
    RGBColor(30, 150, 60),
    RGBColor(200, 130, 0),
    RGBColor(120, 40, 160),
    RGBColor(0, 150, 160),
    RGBColor(90, 90, 90),
    RGBColor(220, 60, 160),
];

fn bounds(series: &[Series], log: bool, pick: fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let vals = series.iter().flat_map(|s| s.1.iter().map(pick)).filter(|v| !log || *v > 0.0);
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (if log { 1.0 } else { 0.0 }, 1.0);
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.08).max(1e-9);
        (if lo >= 0.0 { 0.0 } else { lo - pad }, hi + pad)
    }
}

/// Draws `series` into a 900 x 560 PNG at `path`.
pub fn lines(path: &Path, axes: Axes<'_>, series: &[Series]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = bounds(series, axes.log_x, |p| p.0);
    let (y0, y1) = bounds(series, axes.log_y, |p| p.1);
    let fmt = |v: &f64| {
        let a = v.abs();
        if a >= 1e6 {
            format!("{:.3}M", v / 1e6)
        } else if a >= 1e3 {
            format!("{:.3}k", v / 1e3)
        } else {
            format!("{v:.3}")
        }
        .replace(".000", "")
    };
    macro_rules! draw {
        ($c:expr) => {{
            let mut c = $c;
            c.configure_mesh().x_desc(axes.x).y_desc(axes.y).x_label_formatter(&fmt).y_label_formatter(&fmt).draw()?;
            for (i, (label, pts)) in series.iter().enumerate() {
                let col = COLOURS[i % COLOURS.len()];
                let pts: Vec<(f64, f64)> =
                    pts.iter().copied().filter(|p| (!axes.log_x || p.0 > 0.0) && (!axes.log_y || p.1 > 0.0)).collect();
                c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
                c.draw_series(pts.iter().map(|p| Circle::new(*p, 3, col.filled())))?;
            }
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()?;
        }};
    }
    let mut b = ChartBuilder::on(&root);
    b.caption(axes.title, ("sans-serif", 20)).margin(14).x_label_area_size(42).y_label_area_size(70);
    match (axes.log_x, axes.log_y) {
        (false, false) => draw!(b.build_cartesian_2d(x0..x1, y0..y1)?),
        (true, false) => draw!(b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?),
        (false, true) => draw!(b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?),
        (true, true) => draw!(b.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?),
    }
    root.present()?;
    Ok(())
}
