//! A plain SVG plot (no dependencies): latency against throughput on
//! log-log axes, one polyline per series plus hollow markers for extra points.

/// One line of the plot.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (throughput, latency ms), joined in order.
    pub line: Vec<(f64, f64)>,
    /// Extra points drawn as hollow circles (the open-loop half-load points).
    pub marks: Vec<(f64, f64)>,
}

pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let a = lo.max(1e-6).log10().floor();
    let mut b = hi.max(1e-6).log10().ceil();
    if b <= a {
        b = a + 1.0;
    }
    (a, b)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Renders the plot as an SVG document.
pub fn plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (960.0, 600.0);
    let (left, right, top, bottom) = (80.0, 300.0, 50.0, 60.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.line.iter().chain(&s.marks))
        .copied()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite())
        .collect();
    let fold = |f: fn(&(f64, f64)) -> f64| {
        all.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (xlo, xhi) = if all.is_empty() { (1.0, 10.0) } else { fold(|p| p.0) };
    let (ylo, yhi) = if all.is_empty() { (1.0, 10.0) } else { fold(|p| p.1) };
    let (xa, xb) = decades(xlo, xhi);
    let (ya, yb) = decades(ylo, yhi);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let px = |x: f64| left + (x.log10() - xa) / (xb - xa) * pw;
    let py = |y: f64| top + ph - (y.log10() - ya) / (yb - ya) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">{}</text>\n",
        left + pw / 2.0,
        esc(title)
    );
    // Grid and ticks at 1, 2, 5 of each decade.
    let mut d = xa;
    while d < xb + 0.5 {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(d) * m;
            if v.log10() > xb + 1e-9 {
                continue;
            }
            let x = px(v);
            let stroke = if m == 1.0 { "#bbb" } else { "#eee" };
            s += &format!("<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"{stroke}\"/>\n", top + ph);
            s += &format!("<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", top + ph + 18.0, label(v));
        }
        d += 1.0;
    }
    let mut d = ya;
    while d < yb + 0.5 {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(d) * m;
            if v.log10() > yb + 1e-9 {
                continue;
            }
            let y = py(v);
            let stroke = if m == 1.0 { "#bbb" } else { "#eee" };
            s += &format!(
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>\n",
                left + pw
            );
            s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", left - 6.0, y + 4.0, label(v));
        }
        d += 1.0;
    }
    s += &format!("<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n");
    s +=
        &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2.0, h - 15.0, esc(x_label));
    s += &format!(
        "<text x=\"20\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {})\">{}</text>\n",
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .line
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if se.dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        if !pts.is_empty() {
            s += &format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\n",
                pts.join(" "),
                se.color
            );
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                s += &format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{}\"/>\n", se.color);
            }
        }
        for (x, y) in se.marks.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0) {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                px(*x),
                py(*y),
                se.color
            );
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 15.0;
        s += &format!(
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\n",
            lx + 25.0,
            se.color
        );
        s += &format!("<text x=\"{}\" y=\"{}\">{}</text>\n", lx + 32.0, ly + 4.0, esc(&se.label));
    }
    let ly = top + 10.0 + 20.0 * series.len() as f64 + 10.0;
    let lx = left + pw + 15.0;
    s += &format!(
        "<circle cx=\"{}\" cy=\"{ly}\" r=\"6\" fill=\"none\" stroke=\"#333\" stroke-width=\"2\"/>\n",
        lx + 12.0
    );
    s += &format!("<text x=\"{}\" y=\"{}\">open loop at 50% of saturation</text>\n", lx + 32.0, ly + 4.0);
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_every_series_and_escapes_labels() {
        let s = plot(
            "t <x>",
            "req/s",
            "ms",
            &[
                Series {
                    label: "a & b".into(),
                    color: PALETTE[0],
                    dashed: false,
                    line: vec![(10.0, 1.0), (1000.0, 5.0)],
                    marks: vec![(500.0, 2.0)],
                },
                Series { label: "c".into(), color: PALETTE[1], dashed: true, line: vec![], marks: vec![] },
            ],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a &amp; b") && s.contains("t &lt;x&gt;"));
        assert_eq!(s.matches("<polyline").count(), 1);
        assert!(!s.contains("NaN") && !s.contains("inf"));
        let empty = plot("e", "x", "y", &[]);
        assert!(!empty.contains("NaN"));
    }
}
