//! Packing slips and print-ready documents.
//!
//! The render step draws a packing slip for each package; the purchase step
//! then joins the carrier's label and that slip into one PDF, so the packer
//! prints a single job on the 4x6 inch thermal printer: label first (it goes
//! on the box), then the slip (it goes in the box).
//!
//! Slips use only the PDF built-in Helvetica fonts, so rendering reads no font
//! files and stays in the sub-millisecond range. Text is measured with the
//! standard Helvetica metrics below, so long names are cut with an ellipsis
//! instead of running off the label stock.
//!
//! ```
//! use conveyor_jobs::pdf::{page_count, render_packing_slip, PackingSlip, SlipLine};
//!
//! let slip = PackingSlip {
//!     order_name: "#1001".into(),
//!     ship_to: vec!["Ada Lovelace".into(), "12 St James's Sq".into(), "London SW1Y 4JH".into()],
//!     ship_from: vec!["Conveyor DC1".into()],
//!     package_index: 1,
//!     package_count: 1,
//!     carrier_service: Some("UPS Ground".into()),
//!     lines: vec![SlipLine { sku: "MUG-01".into(), name: "Enamel mug".into(), quantity: 2 }],
//! };
//! let pdf = render_packing_slip(&slip).unwrap();
//! assert_eq!(page_count(&pdf).unwrap(), 1);
//! ```

use std::collections::HashSet;

use lopdf::{Dictionary, Document, Object, ObjectId};
use printpdf::{
    BuiltinFont, Line, LinePoint, Mm, Op, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions,
    Point, Pt, TextItem,
};

/// One row of the slip's item table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlipLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
}

/// Everything printed on one package's slip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackingSlip {
    pub order_name: String,
    /// Address lines, printed as given.
    pub ship_to: Vec<String>,
    pub ship_from: Vec<String>,
    /// 1-based position of this package within the order.
    pub package_index: u32,
    pub package_count: u32,
    pub carrier_service: Option<String>,
    pub lines: Vec<SlipLine>,
}

/// Why a slip could not be drawn or documents could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("the packing slip is invalid: {0}")]
    InvalidSlip(String),
    #[error("the {document} PDF could not be read: {source}")]
    Unreadable {
        document: &'static str,
        #[source]
        source: lopdf::Error,
    },
    #[error("the {document} PDF is encrypted, so its pages cannot be merged")]
    Encrypted { document: &'static str },
    #[error("the {document} PDF has no pages")]
    NoPages { document: &'static str },
    #[error("the text of page {page} could not be extracted: {source}")]
    Text {
        page: u32,
        #[source]
        source: lopdf::Error,
    },
    #[error("the merged PDF could not be written: {0}")]
    Write(#[source] std::io::Error),
}

// Page geometry, in points (1/72 inch). 4 x 6 inches = 101.6 x 152.4 mm.
const PAGE_W: f32 = 288.0;
const PAGE_H: f32 = 432.0;
const MARGIN: f32 = 14.0;
const RIGHT: f32 = PAGE_W - MARGIN;

// Table layout.
const ROW_H: f32 = 11.5;
const ROW_SIZE: f32 = 8.5;
const SKU_X: f32 = MARGIN;
const SKU_W: f32 = 90.0;
/// SKUs are what packers match against the bin, so before cutting one we
/// shrink it down to this size.
const SKU_MIN_SIZE: f32 = 6.5;
const NAME_X: f32 = SKU_X + SKU_W + 6.0;
const QTY_W: f32 = 28.0;
const NAME_W: f32 = RIGHT - QTY_W - 6.0 - NAME_X;
/// Lowest baseline a table row may use; the footer sits below it.
const TABLE_FLOOR: f32 = MARGIN + 18.0;

/// Address blocks longer than this are cut (with an ellipsis on the last
/// line) so the header can never push the item table off the first page.
const MAX_ADDRESS_LINES: usize = 7;

/// Decompressed-size ceiling when extracting text, so a hostile label cannot
/// inflate without bound.
const TEXT_LIMIT_BYTES: usize = 64 * 1024 * 1024;

const REGULAR: BuiltinFont = BuiltinFont::Helvetica;
const BOLD: BuiltinFont = BuiltinFont::HelveticaBold;

/// Draw the packing slip as a PDF of one or more 4x6 inch pages.
pub fn render_packing_slip(slip: &PackingSlip) -> Result<Vec<u8>, PdfError> {
    if slip.package_count == 0 || slip.package_index == 0 || slip.package_index > slip.package_count
    {
        return Err(PdfError::InvalidSlip(format!(
            "package {} of {} is not a valid position (packages are numbered from 1)",
            slip.package_index, slip.package_count
        )));
    }

    let order = clean(&slip.order_name);
    let package = format!("Package {} of {}", slip.package_index, slip.package_count);
    let rows: Vec<Row> = if slip.lines.is_empty() {
        vec![Row {
            sku: String::new(),
            sku_size: ROW_SIZE,
            name: "(no items)".to_string(),
            quantity: String::new(),
        }]
    } else {
        slip.lines
            .iter()
            .map(|l| {
                let (sku, sku_size) = fit_shrinking(&clean(&l.sku), SKU_W);
                Row {
                    sku,
                    sku_size,
                    name: fit(&clean(&l.name), REGULAR, ROW_SIZE, NAME_W),
                    quantity: l.quantity.to_string(),
                }
            })
            .collect()
    };

    // First page: full header, then as many rows as fit.
    let mut first = Vec::new();
    let mut y = PAGE_H - MARGIN - 14.0;
    text(&mut first, BOLD, 16.0, MARGIN, y, "Packing slip");
    y -= 18.0;
    text(
        &mut first,
        BOLD,
        11.0,
        MARGIN,
        y,
        &fit(&format!("Order {order}"), BOLD, 11.0, RIGHT - MARGIN),
    );
    y -= 14.0;
    text(&mut first, REGULAR, 10.0, MARGIN, y, &package);
    if let Some(service) = &slip.carrier_service {
        y -= 12.0;
        let via = format!("Ship via {}", clean(service));
        text(
            &mut first,
            REGULAR,
            9.0,
            MARGIN,
            y,
            &fit(&via, REGULAR, 9.0, RIGHT - MARGIN),
        );
    }
    y -= 18.0;
    y = address_block(&mut first, y, "Ship to", &slip.ship_to, 10.0, 12.0);
    y -= 6.0;
    y = address_block(&mut first, y, "Ship from", &slip.ship_from, 8.0, 10.0);
    y -= 10.0;
    let first_row_y = table_header(&mut first, y);

    let first_capacity = rows_that_fit(first_row_y);
    let mut continued_header = Vec::new();
    let cont_row_y = continuation_header(&mut continued_header, &order, &package);
    let cont_capacity = rows_that_fit(cont_row_y);

    let mut chunks: Vec<&[Row]> = Vec::new();
    let (head, mut rest) = rows.split_at(first_capacity.min(rows.len()));
    chunks.push(head);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(cont_capacity.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }

    let page_total = chunks.len();
    let mut pages = Vec::with_capacity(page_total);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (mut ops, row_y) = if i == 0 {
            (std::mem::take(&mut first), first_row_y)
        } else {
            (continued_header.clone(), cont_row_y)
        };
        table_rows(&mut ops, row_y, chunk);
        let footer = if i + 1 < page_total {
            format!("Page {} of {page_total} - continued on next page", i + 1)
        } else {
            format!("Page {} of {page_total}", i + 1)
        };
        text(&mut ops, REGULAR, 7.0, MARGIN, MARGIN, &footer);
        pages.push(PdfPage::new(Mm(101.6), Mm(152.4), ops));
    }

    let mut doc = PdfDocument::new(&format!("Packing slip {order}"));
    let mut warnings = Vec::new();
    Ok(doc
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut warnings))
}

/// One document: every page of the label, then every page of the slip.
///
/// Pages are moved with everything they reference (fonts, images, content),
/// and attributes a page inherited from its old page tree (resources, media
/// box, rotation) are copied onto the page itself so nothing is lost when it
/// moves to the new tree. Outlines, forms and other document-level extras of
/// the inputs are dropped: the result is for printing.
pub fn merge_print_ready(label_pdf: &[u8], slip_pdf: &[u8]) -> Result<Vec<u8>, PdfError> {
    let mut merged = Document::with_version("1.7");
    let pages_id: ObjectId = (1, 0);
    let mut next_id = 2;
    let mut kids = Vec::new();

    for (document, bytes) in [("label", label_pdf), ("packing slip", slip_pdf)] {
        let mut doc = load(document, bytes)?;
        doc.renumber_objects_with(next_id);
        next_id = doc.max_id + 1;

        let page_ids: Vec<ObjectId> = doc.page_iter().collect();
        if page_ids.is_empty() {
            return Err(PdfError::NoPages { document });
        }
        for &page_id in &page_ids {
            let inherited = inherited_attributes(&doc, page_id);
            if let Ok(page) = doc.get_object_mut(page_id).and_then(Object::as_dict_mut) {
                for (key, value) in inherited {
                    page.set(key, value);
                }
                page.set("Parent", pages_id);
            }
        }
        for id in reachable_from(&doc, &page_ids) {
            if let Some(object) = doc.objects.remove(&id) {
                merged.objects.insert(id, object);
            }
        }
        kids.extend(page_ids);
    }

    let count = kids.len() as i64;
    let mut pages = Dictionary::new();
    pages.set("Type", "Pages");
    pages.set(
        "Kids",
        kids.into_iter().map(Object::Reference).collect::<Vec<_>>(),
    );
    pages.set("Count", count);
    merged.objects.insert(pages_id, Object::Dictionary(pages));
    merged.max_id = next_id.saturating_sub(1).max(pages_id.0);
    let mut catalog = Dictionary::new();
    catalog.set("Type", "Catalog");
    catalog.set("Pages", pages_id);
    let catalog_id = merged.add_object(catalog);
    merged.trailer.set("Root", catalog_id);

    let mut out = Vec::new();
    merged.save_to(&mut out).map_err(PdfError::Write)?;
    Ok(out)
}

/// Number of pages in a PDF.
pub fn page_count(pdf: &[u8]) -> Result<usize, PdfError> {
    Ok(load_any("input", pdf)?.get_pages().len())
}

/// The text of each page, in page order, as lopdf extracts it.
pub fn page_texts(pdf: &[u8]) -> Result<Vec<String>, PdfError> {
    let doc = load_any("input", pdf)?;
    doc.get_pages()
        .keys()
        .map(|&page| {
            doc.extract_text_with_limit(&[page], TEXT_LIMIT_BYTES)
                .map_err(|source| PdfError::Text { page, source })
        })
        .collect()
}

fn load_any(document: &'static str, bytes: &[u8]) -> Result<Document, PdfError> {
    Document::load_mem(bytes).map_err(|source| PdfError::Unreadable { document, source })
}

/// Load a document whose pages we are about to copy.
fn load(document: &'static str, bytes: &[u8]) -> Result<Document, PdfError> {
    let doc = load_any(document, bytes)?;
    // Encrypted strings and streams would be copied under a key the merged
    // file does not carry, producing pages that decode to garbage.
    if doc.is_encrypted() {
        return Err(PdfError::Encrypted { document });
    }
    Ok(doc)
}

/// Attributes a page may inherit from its ancestors (PDF 32000-1, 7.7.3.4)
/// that it does not set itself, nearest ancestor first.
fn inherited_attributes(doc: &Document, page_id: ObjectId) -> Vec<(&'static str, Object)> {
    const INHERITABLE: [&str; 4] = ["Resources", "MediaBox", "CropBox", "Rotate"];
    let Ok(page) = doc.get_dictionary(page_id) else {
        return Vec::new();
    };
    let mut missing: Vec<&'static str> = INHERITABLE
        .into_iter()
        .filter(|key| !page.has(key.as_bytes()))
        .collect();
    let mut found = Vec::new();
    let mut seen = HashSet::from([page_id]);
    let mut parent = page.get(b"Parent").and_then(Object::as_reference).ok();
    // `seen` stops a malformed tree whose Parent links loop.
    while let Some(id) = parent.filter(|id| seen.insert(*id)) {
        let Ok(node) = doc.get_dictionary(id) else {
            break;
        };
        missing.retain(|key| match node.get(key.as_bytes()) {
            Ok(value) => {
                found.push((*key, value.clone()));
                false
            }
            Err(_) => true,
        });
        parent = node.get(b"Parent").and_then(Object::as_reference).ok();
    }
    found
}

/// Every object reachable from `roots` by references, roots included. Page
/// `Parent` links are rewritten before this runs, so the old page tree (and
/// the old catalog with its outlines) is not dragged along.
fn reachable_from(doc: &Document, roots: &[ObjectId]) -> Vec<ObjectId> {
    let mut seen: HashSet<ObjectId> = HashSet::new();
    let mut pending: Vec<ObjectId> = roots.to_vec();
    let mut values: Vec<&Object> = Vec::new();
    while let Some(id) = pending.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(object) = doc.objects.get(&id) else {
            continue;
        };
        values.push(object);
        // Walk nested arrays and dictionaries without recursion, so deeply
        // nested input cannot overflow the stack.
        while let Some(value) = values.pop() {
            match value {
                // Already-visited targets are skipped when popped.
                Object::Reference(target) => pending.push(*target),
                Object::Array(items) => values.extend(items.iter()),
                Object::Dictionary(dict) => values.extend(dict.iter().map(|(_, v)| v)),
                Object::Stream(stream) => values.extend(stream.dict.iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }
    seen.into_iter()
        .filter(|id| doc.objects.contains_key(id))
        .collect()
}

/// Draws "Ship to"/"Ship from" with its lines; returns the next baseline.
fn address_block(
    ops: &mut Vec<Op>,
    mut y: f32,
    title: &str,
    lines: &[String],
    size: f32,
    step: f32,
) -> f32 {
    text(ops, BOLD, 8.0, MARGIN, y, title);
    y -= step;
    let width = RIGHT - MARGIN;
    let shown = lines.len().min(MAX_ADDRESS_LINES);
    for (i, line) in lines.iter().take(shown).enumerate() {
        let mut line = clean(line);
        if i + 1 == shown && lines.len() > shown {
            // Force the ellipsis so the reader knows lines were left out.
            line.push_str(" \u{2026}");
        }
        text(
            ops,
            REGULAR,
            size,
            MARGIN,
            y,
            &fit(&line, REGULAR, size, width),
        );
        y -= step;
    }
    y
}

/// Column titles and a rule; returns the baseline of the first row.
fn table_header(ops: &mut Vec<Op>, y: f32) -> f32 {
    text(ops, BOLD, 8.0, SKU_X, y, "SKU");
    text(ops, BOLD, 8.0, NAME_X, y, "Item");
    right_text(ops, BOLD, 8.0, RIGHT, y, "Qty");
    rule(ops, y - 3.5);
    y - 3.5 - ROW_H
}

/// Header of pages after the first: enough to match a loose page to its order.
fn continuation_header(ops: &mut Vec<Op>, order: &str, package: &str) -> f32 {
    let mut y = PAGE_H - MARGIN - 11.0;
    text(ops, BOLD, 12.0, MARGIN, y, "Packing slip (continued)");
    y -= 14.0;
    let line = format!("Order {order} \u{00b7} {package}");
    text(
        ops,
        REGULAR,
        9.0,
        MARGIN,
        y,
        &fit(&line, REGULAR, 9.0, RIGHT - MARGIN),
    );
    y -= 18.0;
    table_header(ops, y)
}

/// One table row, already fitted to its columns.
struct Row {
    sku: String,
    sku_size: f32,
    name: String,
    quantity: String,
}

fn table_rows(ops: &mut Vec<Op>, mut y: f32, rows: &[Row]) {
    for row in rows {
        text(ops, REGULAR, row.sku_size, SKU_X, y, &row.sku);
        text(ops, REGULAR, ROW_SIZE, NAME_X, y, &row.name);
        right_text(ops, BOLD, ROW_SIZE, RIGHT, y, &row.quantity);
        y -= ROW_H;
    }
}

fn rows_that_fit(first_row_y: f32) -> usize {
    if first_row_y < TABLE_FLOOR {
        // Cannot happen with the bounded header, but never loop on zero rows.
        return 1;
    }
    (((first_row_y - TABLE_FLOOR) / ROW_H).floor() as usize) + 1
}

fn rule(ops: &mut Vec<Op>, y: f32) {
    let point = |x: f32| LinePoint {
        p: Point { x: Pt(x), y: Pt(y) },
        bezier: false,
    };
    ops.push(Op::SetOutlineThickness { pt: Pt(0.6) });
    ops.push(Op::DrawLine {
        line: Line {
            points: vec![point(MARGIN), point(RIGHT)],
            is_closed: false,
        },
    });
}

/// Each string is its own text object: `Td` is relative, so positioning by a
/// fresh BT/ET keeps every string exactly where the layout says.
fn text(ops: &mut Vec<Op>, font: BuiltinFont, size: f32, x: f32, y: f32, s: &str) {
    ops.push(Op::StartTextSection);
    ops.push(Op::SetFont {
        font: PdfFontHandle::Builtin(font),
        size: Pt(size),
    });
    ops.push(Op::SetTextCursor {
        pos: Point { x: Pt(x), y: Pt(y) },
    });
    ops.push(Op::ShowText {
        items: vec![TextItem::Text(s.to_string())],
    });
    ops.push(Op::EndTextSection);
}

fn right_text(ops: &mut Vec<Op>, font: BuiltinFont, size: f32, right: f32, y: f32, s: &str) {
    let x = right - text_width(s, font, size);
    text(ops, font, size, x, y, s);
}

/// Control characters (tabs, newlines pasted into addresses) would print as
/// `?`; a space reads better.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `s` at the row size if it fits, else at the largest size down to
/// [`SKU_MIN_SIZE`] that fits, else cut at the minimum size.
fn fit_shrinking(s: &str, max_width: f32) -> (String, f32) {
    let mut size = ROW_SIZE;
    while size > SKU_MIN_SIZE && text_width(s, REGULAR, size) > max_width {
        size = (size - 0.5).max(SKU_MIN_SIZE);
    }
    (fit(s, REGULAR, size, max_width), size)
}

/// `s` if it fits in `max_width` points, else its longest prefix that fits
/// with a trailing ellipsis.
fn fit(s: &str, font: BuiltinFont, size: f32, max_width: f32) -> String {
    if text_width(s, font, size) <= max_width {
        return s.to_string();
    }
    let budget = max_width - text_width("\u{2026}", font, size);
    let mut width = 0.0;
    let mut out = String::new();
    for c in s.chars() {
        width += char_width(c, font) * size / 1000.0;
        if width > budget {
            break;
        }
        out.push(c);
    }
    let mut out = out.trim_end().to_string();
    out.push('\u{2026}');
    out
}

fn text_width(s: &str, font: BuiltinFont, size: f32) -> f32 {
    s.chars().map(|c| char_width(c, font)).sum::<f32>() * size / 1000.0
}

/// Advance width in 1/1000 em. Printable ASCII uses the Adobe core-font
/// metrics; anything else is assumed a full em wide, which can only make us
/// truncate a little early, never overflow.
fn char_width(c: char, font: BuiltinFont) -> f32 {
    let table = if font == BOLD {
        &HELVETICA_BOLD
    } else {
        &HELVETICA
    };
    match c as u32 {
        code @ 32..=126 => f32::from(table[(code - 32) as usize]),
        _ => 1000.0,
    }
}

/// Helvetica widths for U+0020..=U+007E (Adobe Helvetica AFM).
#[rustfmt::skip]
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // space../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0..?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // P.._
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // `..o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,      // p..~
];

/// Helvetica-Bold widths for U+0020..=U+007E (Adobe Helvetica-Bold AFM).
#[rustfmt::skip]
const HELVETICA_BOLD: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, // space../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, // 0..?
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778, // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556, // P.._
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, // `..o
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,      // p..~
];

#[cfg(test)]
mod tests {
    use super::*;
    use lopdf::content::{Content, Operation};
    use lopdf::{Stream, dictionary};

    fn slip(lines: Vec<SlipLine>) -> PackingSlip {
        PackingSlip {
            order_name: "#1001".into(),
            ship_to: vec![
                "Zoë Müller".into(),
                "Hauptstraße 5\n2. OG".into(),
                "10115 Berlin".into(),
                "Germany".into(),
            ],
            ship_from: vec![
                "Conveyor DC1".into(),
                "1 Dock Rd".into(),
                "Newark NJ 07102".into(),
            ],
            package_index: 2,
            package_count: 3,
            carrier_service: Some("DHL Express Worldwide".into()),
            lines,
        }
    }

    fn line(sku: &str, name: &str, quantity: u32) -> SlipLine {
        SlipLine {
            sku: sku.into(),
            name: name.into(),
            quantity,
        }
    }

    /// Texts of every page, split into the strings drawn.
    fn drawn_strings(pdf: &[u8]) -> Vec<Vec<String>> {
        page_texts(pdf)
            .unwrap()
            .iter()
            .map(|t| t.lines().map(str::to_string).collect())
            .collect()
    }

    /// A one-page "carrier label" built directly with lopdf. With
    /// `inherit_resources`, the font lives on the page tree node rather than
    /// the page, as some carriers' generators do.
    fn label_pdf(inherit_resources: bool) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => "Courier",
            "Encoding" => "WinAnsiEncoding",
        });
        let resources_id =
            doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 14.into()]),
                Operation::new("Td", vec![20.into(), 400.into()]),
                Operation::new(
                    "Tj",
                    vec![Object::string_literal("SHIPPING LABEL 1Z999AA10123456784")],
                ),
                Operation::new("ET", vec![]),
            ],
        };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
        let mut page = dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        };
        let mut pages = dictionary! {
            "Type" => "Pages",
            "Count" => 1,
            "MediaBox" => vec![0.into(), 0.into(), 288.into(), 432.into()],
        };
        if inherit_resources {
            pages.set("Resources", resources_id);
        } else {
            page.set("Resources", resources_id);
        }
        let page_id = doc.add_object(page);
        pages.set("Kids", vec![page_id.into()]);
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    fn sixty_lines() -> Vec<SlipLine> {
        (1..=60)
            .map(|i| line(&format!("SKU-{i:03}"), &format!("Item number {i}"), 100 + i))
            .collect()
    }

    #[test]
    fn a_slip_renders_with_order_package_skus_and_quantities() {
        let pdf = render_packing_slip(&slip(vec![
            line("MUG-01", "Enamel mug", 17),
            line("TEA-GRN", "Green tea, 50 bags", 23),
            line("SPN-3", "Bamboo spoon", 41),
        ]))
        .unwrap();

        assert!(Document::load_mem(&pdf).is_ok());
        let pages = drawn_strings(&pdf);
        assert_eq!(pages.len(), 1);
        let strings = &pages[0];
        for expected in [
            "Packing slip",
            "Order #1001",
            "Package 2 of 3",
            "Ship via DHL Express Worldwide",
            "Zoë Müller",
            "Hauptstraße 5 2. OG",
            "Conveyor DC1",
            "MUG-01",
            "17",
            "TEA-GRN",
            "Green tea, 50 bags",
            "23",
            "SPN-3",
            "41",
        ] {
            assert!(
                strings.iter().any(|s| s == expected),
                "{expected:?} missing from {strings:?}"
            );
        }
    }

    #[test]
    fn a_slip_page_is_four_by_six_inches() {
        let pdf = render_packing_slip(&slip(vec![line("A", "B", 1)])).unwrap();
        let doc = Document::load_mem(&pdf).unwrap();
        let page_id = doc.get_pages()[&1];
        let media_box = doc
            .get_dictionary(page_id)
            .unwrap()
            .get(b"MediaBox")
            .unwrap();
        let numbers: Vec<f32> = media_box
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_float().unwrap())
            .collect();
        assert!(
            (numbers[2] - 288.0).abs() < 0.5 && (numbers[3] - 432.0).abs() < 0.5,
            "{numbers:?}"
        );
    }

    #[test]
    fn a_sixty_line_slip_spans_several_pages_and_keeps_every_line() {
        let pdf = render_packing_slip(&slip(sixty_lines())).unwrap();
        let pages = drawn_strings(&pdf);
        assert!(pages.len() >= 3, "{} pages", pages.len());
        assert_eq!(page_count(&pdf).unwrap(), pages.len());

        for i in 1..=60 {
            let sku = format!("SKU-{i:03}");
            let on: Vec<usize> = (0..pages.len())
                .filter(|&p| pages[p].contains(&sku))
                .collect();
            assert_eq!(on.len(), 1, "{sku} on pages {on:?}");
            assert!(
                pages[on[0]].contains(&(100 + i).to_string()),
                "quantity of {sku}"
            );
        }
        for (p, strings) in pages.iter().enumerate().skip(1) {
            assert!(
                strings.contains(&"Packing slip (continued)".to_string()),
                "page {p}"
            );
            assert!(
                strings.iter().any(|s| s.contains("Package 2 of 3")),
                "page {p}"
            );
        }
        assert!(
            pages[0]
                .iter()
                .any(|s| s.contains("continued on next page"))
        );
    }

    #[test]
    fn rows_never_run_into_the_footer() {
        // Lay out one row more than fits and check the last baseline.
        let first_row_y = 135.0;
        let rows = rows_that_fit(first_row_y);
        let last_baseline = first_row_y - (rows as f32 - 1.0) * ROW_H;
        assert!(last_baseline >= TABLE_FLOOR);
        assert!(last_baseline - ROW_H < TABLE_FLOOR);
    }

    #[test]
    fn long_names_are_truncated_with_an_ellipsis() {
        let long = "Extra large hand-thrown stoneware serving platter with reactive glaze, seconds";
        let pdf = render_packing_slip(&slip(vec![line("PLT-1", long, 1)])).unwrap();
        let strings = &drawn_strings(&pdf)[0];
        let shown = strings
            .iter()
            .find(|s| s.starts_with("Extra large"))
            .unwrap();
        assert!(shown.ends_with('\u{2026}'), "{shown:?}");
        assert!(shown.len() < long.len());
        assert!(!strings.iter().any(|s| s == long));
        assert!(text_width(shown, REGULAR, ROW_SIZE) <= NAME_W);
    }

    #[test]
    fn a_long_sku_is_shrunk_before_it_is_cut() {
        let sku = "TSHIRT-ORGANIC-BLK-XL"; // too wide for the column at row size
        assert!(text_width(sku, REGULAR, ROW_SIZE) > SKU_W);
        let (shown, size) = fit_shrinking(sku, SKU_W);
        assert_eq!(shown, sku);
        assert!((SKU_MIN_SIZE..ROW_SIZE).contains(&size));
        assert!(text_width(&shown, REGULAR, size) <= SKU_W);

        let absurd = "X".repeat(60);
        let (shown, size) = fit_shrinking(&absurd, SKU_W);
        assert_eq!(size, SKU_MIN_SIZE);
        assert!(shown.ends_with('\u{2026}'));
        assert!(text_width(&shown, REGULAR, size) <= SKU_W);

        let pdf = render_packing_slip(&slip(vec![line(sku, "Tee", 1)])).unwrap();
        assert!(drawn_strings(&pdf)[0].contains(&sku.to_string()));
    }

    #[test]
    fn text_that_fits_is_left_alone() {
        assert_eq!(fit("Mug", REGULAR, 10.0, 100.0), "Mug");
        // "WWWW" is 4 x 944/1000 x 10 = 37.76 pt.
        assert_eq!(fit("WWWW", REGULAR, 10.0, 37.8), "WWWW");
        assert_eq!(fit("WWWW", REGULAR, 10.0, 37.7), "WW\u{2026}");
    }

    #[test]
    fn a_package_index_outside_the_count_is_an_error() {
        for (index, count) in [(0, 3), (4, 3), (1, 0)] {
            let mut bad = slip(vec![]);
            bad.package_index = index;
            bad.package_count = count;
            let err = render_packing_slip(&bad).unwrap_err();
            assert!(
                matches!(err, PdfError::InvalidSlip(_)),
                "{index} of {count}: {err}"
            );
        }
    }

    #[test]
    fn a_slip_without_lines_still_renders() {
        let pdf = render_packing_slip(&slip(vec![])).unwrap();
        assert!(drawn_strings(&pdf)[0].contains(&"(no items)".to_string()));
    }

    #[test]
    fn merging_a_label_and_a_two_page_slip_puts_the_label_first() {
        let slip_pdf = render_packing_slip(&slip(sixty_lines()[..30].to_vec())).unwrap();
        assert_eq!(page_count(&slip_pdf).unwrap(), 2);

        let merged = merge_print_ready(&label_pdf(false), &slip_pdf).unwrap();

        assert!(Document::load_mem(&merged).is_ok());
        assert_eq!(page_count(&merged).unwrap(), 3);
        let texts = page_texts(&merged).unwrap();
        assert!(
            texts[0].contains("SHIPPING LABEL 1Z999AA10123456784"),
            "{:?}",
            texts[0]
        );
        assert!(texts[1].contains("Packing slip") && texts[1].contains("SKU-001"));
        assert!(texts[2].contains("Packing slip (continued)") && texts[2].contains("SKU-030"));
    }

    #[test]
    fn a_label_page_keeps_resources_it_inherited_from_its_page_tree() {
        let slip_pdf = render_packing_slip(&slip(vec![line("A", "B", 1)])).unwrap();
        let merged = merge_print_ready(&label_pdf(true), &slip_pdf).unwrap();
        let doc = Document::load_mem(&merged).unwrap();
        let first = doc.get_pages()[&1];
        let fonts = doc.get_page_fonts(first).unwrap();
        assert!(fonts.contains_key(b"F1".as_slice()), "label font lost");
        let page = doc.get_dictionary(first).unwrap();
        assert!(page.has(b"MediaBox"), "label media box lost");
        assert!(page_texts(&merged).unwrap()[0].contains("SHIPPING LABEL"));
    }

    #[test]
    fn merged_slip_pages_keep_their_fonts() {
        let slip_pdf = render_packing_slip(&slip(vec![line("A", "B", 1)])).unwrap();
        let merged = merge_print_ready(&label_pdf(false), &slip_pdf).unwrap();
        let doc = Document::load_mem(&merged).unwrap();
        let second = doc.get_pages()[&2];
        assert!(!doc.get_page_fonts(second).unwrap().is_empty());
    }

    #[test]
    fn merging_garbage_bytes_is_an_error_not_a_panic() {
        let slip_pdf = render_packing_slip(&slip(vec![line("A", "B", 1)])).unwrap();
        let err = merge_print_ready(b"this is not a pdf", &slip_pdf).unwrap_err();
        assert!(
            matches!(
                err,
                PdfError::Unreadable {
                    document: "label",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("the label PDF could not be read")
        );

        let err = merge_print_ready(&label_pdf(false), &[]).unwrap_err();
        assert!(
            matches!(
                err,
                PdfError::Unreadable {
                    document: "packing slip",
                    ..
                }
            ),
            "{err}"
        );

        let mut truncated = label_pdf(false);
        truncated.truncate(truncated.len() / 3);
        assert!(merge_print_ready(&truncated, &slip_pdf).is_err());
    }

    #[test]
    fn page_count_and_texts_reject_garbage() {
        assert!(page_count(b"%PDF-1.7 nonsense").is_err());
        assert!(page_texts(b"\x00\x01\x02").is_err());
    }

    #[test]
    fn the_width_tables_match_the_builtin_font_metrics() {
        for (font, table) in [(REGULAR, &HELVETICA), (BOLD, &HELVETICA_BOLD)] {
            let parsed = font.get_parsed_font().unwrap();
            let mut checked = 0;
            let per_em = f32::from(parsed.units_per_em);
            for code in 32u32..=126 {
                let c = char::from_u32(code).unwrap();
                let Some(width) = parsed
                    .lookup_glyph_index(code)
                    .and_then(|gid| parsed.get_glyph_width(gid))
                else {
                    continue;
                };
                let expected = f32::from(width) * 1000.0 / per_em;
                let ours = f32::from(table[(code - 32) as usize]);
                assert!(
                    (ours - expected).abs() <= 2.0,
                    "{font:?} {c:?}: {ours} vs {expected}"
                );
                checked += 1;
            }
            // Guard against a vacuous pass if the font stopped exposing widths.
            assert!(checked >= 90, "{font:?}: only {checked} widths compared");
        }
    }
}
