//! The shipping label PDF served at a bought shipment's `label_url`: one 4x6 inch
//! page (288 x 432 pt) with carrier, service, tracking code, ship-to, ship-from and
//! the shipment reference as real text (builtin Helvetica, so any PDF tool can
//! extract it) and drawn bars standing in for a barcode. Conveyor merges this into
//! its print-ready document, so it has to be a PDF that lopdf can parse.

use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};

/// Label page size in points: 4 x 6 inches.
pub const WIDTH: f32 = 288.0;
pub const HEIGHT: f32 = 432.0;

/// What a label shows.
#[derive(Debug, Clone)]
pub struct LabelInfo {
    pub carrier: String,
    pub service: String,
    pub tracking_code: String,
    pub reference: Option<String>,
    pub shipment_id: String,
    pub ship_to: Vec<String>,
    pub ship_from: Vec<String>,
    pub weight_oz: f64,
    pub label_date: String,
}

/// Builtin fonts only speak WinAnsi; anything else would print as garbage, so it
/// is replaced rather than mis-rendered.
fn pdf_text(text: &str) -> Object {
    let ascii: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    Object::string_literal(ascii)
}

struct Page {
    ops: Vec<Operation>,
}

impl Page {
    fn text(&mut self, font: &str, size: f32, x: f32, y: f32, text: &str) {
        self.ops.extend([
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec![font.into(), size.into()]),
            Operation::new("Td", vec![x.into(), y.into()]),
            Operation::new("Tj", vec![pdf_text(text)]),
            Operation::new("ET", vec![]),
        ]);
    }

    fn line(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, width: f32) {
        self.ops.extend([
            Operation::new("w", vec![width.into()]),
            Operation::new("m", vec![x1.into(), y1.into()]),
            Operation::new("l", vec![x2.into(), y2.into()]),
            Operation::new("S", vec![]),
        ]);
    }

    fn bar(&mut self, x: f32, y: f32, width: f32, height: f32) {
        self.ops.extend([
            Operation::new("re", vec![x.into(), y.into(), width.into(), height.into()]),
            Operation::new("f", vec![]),
        ]);
    }
}

/// Renders the label as PDF bytes.
pub fn render_label(info: &LabelInfo) -> anyhow::Result<Vec<u8>> {
    let mut page = Page { ops: Vec::new() };
    let margin = 12.0;
    // Frame.
    page.ops.extend([
        Operation::new("w", vec![1.5.into()]),
        Operation::new(
            "re",
            vec![
                (margin / 2.0).into(),
                (margin / 2.0).into(),
                (WIDTH - margin).into(),
                (HEIGHT - margin).into(),
            ],
        ),
        Operation::new("S", vec![]),
    ]);

    // Header: carrier and service.
    page.text("F2", 22.0, margin + 4.0, HEIGHT - 40.0, &info.carrier);
    page.text("F1", 11.0, margin + 4.0, HEIGHT - 56.0, &info.service);
    page.text("F1", 7.0, 170.0, HEIGHT - 32.0, &info.label_date);
    page.text(
        "F1",
        7.0,
        170.0,
        HEIGHT - 42.0,
        &format!("{:.1} oz", info.weight_oz),
    );
    page.line(
        margin / 2.0,
        HEIGHT - 66.0,
        WIDTH - margin / 2.0,
        HEIGHT - 66.0,
        1.5,
    );

    // Ship from, small.
    let mut y = HEIGHT - 80.0;
    page.text("F2", 7.0, margin + 4.0, y, "FROM:");
    for line in &info.ship_from {
        y -= 9.0;
        page.text("F1", 7.0, margin + 4.0, y, line);
    }

    // Ship to, large.
    y -= 20.0;
    page.text("F2", 10.0, margin + 4.0, y, "SHIP TO:");
    for line in &info.ship_to {
        y -= 15.0;
        page.text("F1", 12.0, margin + 20.0, y, line);
    }
    page.line(margin / 2.0, 150.0, WIDTH - margin / 2.0, 150.0, 1.5);

    // Barcode stand-in: bar widths follow the tracking code's characters, so
    // different codes look different.
    page.text("F2", 8.0, margin + 4.0, 138.0, "TRACKING #");
    let mut x = margin + 10.0;
    for byte in info.tracking_code.bytes() {
        let (wide, gap) = (f32::from(byte % 3) + 1.0, f32::from(byte % 2) + 1.5);
        if x + wide > WIDTH - margin - 10.0 {
            break;
        }
        page.bar(x, 70.0, wide, 60.0);
        x += wide + gap;
    }
    page.text("F2", 11.0, margin + 10.0, 56.0, &info.tracking_code);
    page.line(margin / 2.0, 46.0, WIDTH - margin / 2.0, 46.0, 0.75);
    let reference = info.reference.as_deref().unwrap_or("-");
    page.text("F1", 8.0, margin + 4.0, 34.0, &format!("REF: {reference}"));
    page.text(
        "F1",
        6.0,
        margin + 4.0,
        22.0,
        &format!("SHIPMENT: {}", info.shipment_id),
    );
    page.text("F1", 6.0, 170.0, 22.0, "SANDBOX - NOT POSTAGE");

    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = |name: &str| {
        dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => name.to_owned(),
            "Encoding" => "WinAnsiEncoding",
        }
    };
    let regular = doc.add_object(font("Helvetica"));
    let bold = doc.add_object(font("Helvetica-Bold"));
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => regular, "F2" => bold },
    });
    let content = Content {
        operations: page.ops,
    };
    let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode()?));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content_id,
        "Resources" => resources_id,
        "MediaBox" => vec![0.into(), 0.into(), WIDTH.into(), HEIGHT.into()],
    });
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => vec![page_id.into()],
            "Count" => 1,
        }),
    );
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> LabelInfo {
        LabelInfo {
            carrier: "USPS".into(),
            service: "Priority".into(),
            tracking_code: "9400100000000000000001".into(),
            reference: Some("pkg-42 (first)".into()),
            shipment_id: "shp_1".into(),
            ship_to: vec![
                "Zoë Smith".into(),
                "1 Main St".into(),
                "Boston MA 02108".into(),
            ],
            ship_from: vec!["Warehouse".into()],
            weight_oz: 15.4,
            label_date: "2025-03-07T16:46:20Z".into(),
        }
    }

    #[test]
    fn a_label_is_one_4x6_page_with_its_text_extractable() {
        let bytes = render_label(&info()).unwrap();
        let doc = Document::load_mem(&bytes).unwrap();
        let pages = doc.get_pages();
        assert_eq!(pages.len(), 1);
        let text = doc.extract_text(&[1]).unwrap();
        for expected in [
            "USPS",
            "Priority",
            "9400100000000000000001",
            "pkg-42 (first)",
            "Zo? Smith",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from {text:?}"
            );
        }
    }
}
