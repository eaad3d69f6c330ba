//! `confusion_matrix.png`: the confusion matrix as a heat map an analyst can read at a glance.

use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

use sentimentd_data::Label;

use crate::error::ModelError;
use crate::metrics::EvalMetrics;

/// Bundled so the picture has text on a server without fonts.
static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("bundled font could not be registered; the image will lack text");
        }
    });
}

/// Draws rows (true class) by columns (predicted class), each cell shaded by its share of the
/// row and labelled with count and row percentage.
pub fn confusion_png(path: &Path, m: &EvalMetrics, title: &str) -> Result<(), ModelError> {
    register_font();
    let err = |e: &dyn std::fmt::Display| ModelError::Plot(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (640, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let caption = format!(
        "{title}\naccuracy {:.3}   macro-recall {:.3}",
        m.accuracy, m.macro_recall
    );
    let (top, body) = root.split_vertically(70);
    for (i, line) in caption.lines().enumerate() {
        top.draw(&Text::new(
            line.to_string(),
            (20, 12 + 26 * i as i32),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(|e| err(&e))?;
    }
    let (left, right) = (130, 30);
    let (x0, y0) = (left, 40);
    let cell = ((640 - left - right) / 3).min(140);
    for (c, label) in Label::ALL.iter().enumerate() {
        body.draw(&Text::new(
            label.as_str(),
            (x0 + c as i32 * cell + 30, y0 - 28),
            ("sans-serif", 16).into_font(),
        ))
        .map_err(|e| err(&e))?;
    }
    body.draw(&Text::new(
        "predicted →",
        (x0 + cell, y0 + 3 * cell + 12),
        ("sans-serif", 16).into_font(),
    ))
    .map_err(|e| err(&e))?;
    for (r, truth) in Label::ALL.iter().enumerate() {
        let row = m.confusion_matrix[r];
        let total: u64 = row.iter().sum();
        body.draw(&Text::new(
            format!("true {}", truth.as_str()),
            (10, y0 + r as i32 * cell + cell / 2 - 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(|e| err(&e))?;
        for (c, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let shade = (255.0 * (1.0 - 0.8 * share)) as u8;
            let (cx, cy) = (x0 + c as i32 * cell, y0 + r as i32 * cell);
            body.draw(&Rectangle::new(
                [(cx, cy), (cx + cell - 2, cy + cell - 2)],
                RGBColor(shade, shade, 255).filled(),
            ))
            .map_err(|e| err(&e))?;
            let color = if share > 0.55 { WHITE } else { BLACK };
            body.draw(&Text::new(
                format!("{count}"),
                (cx + 14, cy + cell / 2 - 18),
                ("sans-serif", 22).into_font().color(&color),
            ))
            .map_err(|e| err(&e))?;
            body.draw(&Text::new(
                format!("{:.1}%", 100.0 * share),
                (cx + 14, cy + cell / 2 + 8),
                ("sans-serif", 15).into_font().color(&color),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        let m = EvalMetrics::from_confusion([[8, 2, 0], [1, 6, 3], [0, 4, 16]]);
        confusion_png(&path, &m, "test").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
