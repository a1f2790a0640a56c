//! Report artefacts: PNG image grids, loss-curve plots (plotters, bitmap backend) and the
//! Markdown report.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `[3, H, W]` (or `[1, 3, H, W]`) in [-1, 1] -> RGB8 bytes (row-major) + (H, W).
pub fn to_rgb8(img: &Tensor) -> (Vec<u8>, u32, u32) {
    let img = if img.dim() == 4 {
        img.get(0)
    } else {
        img.shallow_clone()
    };
    let (h, w) = (img.size()[1], img.size()[2]);
    let u8s = ((img.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let mut buf = vec![0u8; (h * w * 3) as usize];
    u8s.copy_data_u8(&mut buf, (h * w * 3) as usize);
    (buf, h as u32, w as u32)
}

/// Save one `[3, H, W]` image in [-1, 1] as PNG.
pub fn save_png(img: &Tensor, path: &Path) -> Result<()> {
    let (buf, h, w) = to_rgb8(img);
    let im = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::Render {
        path: path.to_path_buf(),
        msg: "buffer size mismatch".into(),
    })?;
    im.save(path).map_err(|e| Error::Render {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// A grid PNG: one row per image, one column per tensor of `columns` (each `[B, 3, H, W]` in
/// [-1, 1], same shape), separated by 2-px white gutters.
pub fn save_grid(columns: &[&Tensor], path: &Path) -> Result<()> {
    let render = |msg: String| Error::Render {
        path: path.to_path_buf(),
        msg,
    };
    let first = columns.first().ok_or_else(|| render("no columns".into()))?;
    let (b, h, w) = (
        first.size()[0],
        first.size()[2] as u32,
        first.size()[3] as u32,
    );
    let gap = 2u32;
    let cols = columns.len() as u32;
    let gw = cols * w + (cols + 1) * gap;
    let gh = b as u32 * h + (b as u32 + 1) * gap;
    let mut grid = image::RgbImage::from_pixel(gw, gh, image::Rgb([255, 255, 255]));
    for (c, col) in columns.iter().enumerate() {
        if col.size() != first.size() {
            return Err(render(format!(
                "column {c} has shape {:?}, expected {:?}",
                col.size(),
                first.size()
            )));
        }
        for r in 0..b {
            let (buf, _, _) = to_rgb8(&col.get(r));
            let (x0, y0) = (gap + c as u32 * (w + gap), gap + r as u32 * (h + gap));
            for y in 0..h {
                for x in 0..w {
                    let i = ((y * w + x) * 3) as usize;
                    grid.put_pixel(x0 + x, y0 + y, image::Rgb([buf[i], buf[i + 1], buf[i + 2]]));
                }
            }
        }
    }
    grid.save(path).map_err(|e| render(e.to_string()))
}

/// One curve of a loss plot.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// `key` of each record of a metrics.jsonl (records without it are skipped), against `step`.
pub fn curve_from_metrics(label: &str, records: &[serde_json::Value], key: &str) -> Curve {
    Curve {
        label: label.to_string(),
        points: records
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect(),
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Plot curves (log-scale y) into a PNG. With `text = false` no font is touched (for hosts
/// without usable fonts): axes and curves only, the legend goes into the Markdown instead.
pub fn plot_curves(curves: &[Curve], title: &str, path: &Path, text: bool) -> Result<()> {
    let err = |e: String| Error::Render {
        path: path.to_path_buf(),
        msg: e,
    };
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.points.clone()).collect();
    if all.is_empty() {
        return Err(err("no points to plot".into()));
    }
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = all
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(1e-6);
    let ymax = all
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(ymin * 1.01);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(36)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..xmax, (ymin * 0.9..ymax * 1.1).log_scale())
        .map_err(|e| err(e.to_string()))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    for (i, c) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let series = chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        if text {
            series
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Register a sans-serif font for plot text, read from the usual system locations. Text is
/// rendered in pure Rust (plotters' `ab_glyph`), so binaries have no fontconfig/freetype link
/// dependency and run on bare GPU hosts. Returns false when no font file was found.
fn ensure_font() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        const CANDIDATES: &[&str] = &[
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        CANDIDATES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// [`plot_curves`] with text, falling back to a text-free plot if no font is available.
pub fn plot_curves_robust(curves: &[Curve], title: &str, path: &Path) -> Result<bool> {
    if !ensure_font() {
        return plot_curves(curves, title, path, false).map(|_| false);
    }
    match plot_curves(curves, title, path, true) {
        Ok(()) => Ok(true),
        Err(e) => {
            eprintln!("warning: plot with text failed ({e}); drawing without text");
            plot_curves(curves, title, path, false).map(|_| false)
        }
    }
}
