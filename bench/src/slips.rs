//! What the document step costs per package: drawing the packing slip (the
//! render job) and merging it behind the carrier's label into the one
//! print-ready PDF (the purchase job), measured in this process with the same
//! functions the jobs call.

use std::time::{Duration, Instant};

use conveyor_jobs::pdf::{PackingSlip, SlipLine, merge_print_ready, render_packing_slip};
use conveyor_sandbox::{LabelInfo, render_label};

/// Per-package times of one slip size.
pub struct SlipTimes {
    pub lines: usize,
    pub pages: usize,
    pub render: Vec<Duration>,
    pub merge: Vec<Duration>,
}

impl SlipTimes {
    pub fn print(&self) {
        let total: Vec<Duration> = self
            .render
            .iter()
            .zip(&self.merge)
            .map(|(r, m)| *r + *m)
            .collect();
        println!(
            "  slip of {:>2} lines ({} page{}), {} packages: render {} | merge {} | both {}",
            self.lines,
            self.pages,
            if self.pages == 1 { "" } else { "s" },
            self.render.len(),
            summary(&self.render),
            summary(&self.merge),
            summary(&total),
        );
    }
}

/// Renders and merges `packages` slips of `lines` lines each, one after
/// another on one thread (a job's document step runs on one thread too).
pub fn measure(lines: usize, packages: usize) -> anyhow::Result<SlipTimes> {
    let label = render_label(&label_info())?;
    let slip = slip(lines);
    let pages = conveyor_jobs::pdf::page_count(&render_packing_slip(&slip)?)?;
    let mut times = SlipTimes {
        lines,
        pages,
        render: Vec::with_capacity(packages),
        merge: Vec::with_capacity(packages),
    };
    for _ in 0..packages {
        let started = Instant::now();
        let rendered = render_packing_slip(&slip)?;
        let rendered_at = Instant::now();
        let merged = merge_print_ready(&label, &rendered)?;
        let merged_at = Instant::now();
        anyhow::ensure!(merged.len() > rendered.len(), "the merge lost pages");
        times.render.push(rendered_at - started);
        times.merge.push(merged_at - rendered_at);
    }
    Ok(times)
}

fn summary(values: &[Duration]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort();
    let at = |q: f64| ms(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    format!("p50 {:.2} p99 {:.2} ms", at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn label_info() -> LabelInfo {
    LabelInfo {
        carrier: "USPS".into(),
        service: "Priority".into(),
        tracking_code: "9400100000000000000001".into(),
        reference: Some("pkg-42".into()),
        shipment_id: "shp_0123456789abcdef".into(),
        ship_to: ship_to(),
        ship_from: ship_from(),
        weight_oz: 43.2,
        label_date: "2026-11-21T10:00:00Z".into(),
    }
}

fn slip(lines: usize) -> PackingSlip {
    PackingSlip {
        order_name: "#104217".into(),
        ship_to: ship_to(),
        ship_from: ship_from(),
        package_index: 1,
        package_count: 2,
        carrier_service: Some("USPS Priority".into()),
        lines: (1..=lines)
            .map(|i| SlipLine {
                sku: format!("SKU-{i:04}"),
                name: format!("Merino crew sock, charcoal, size {}", 6 + i % 8),
                quantity: 1 + (i % 3) as u32,
            })
            .collect(),
    }
}

fn ship_to() -> Vec<String> {
    [
        "Maria Lopez",
        "2400 Market St Apt 5",
        "San Francisco CA 94114",
        "US",
    ]
    .map(String::from)
    .to_vec()
}

fn ship_from() -> Vec<String> {
    ["Conveyor RNO", "900 Logistics Way", "Reno NV 89502"]
        .map(String::from)
        .to_vec()
}
