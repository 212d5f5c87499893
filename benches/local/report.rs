//! The report: every figure as a row (printed as it is measured), the markdown table at
//! the end, and the text of rates, sizes and counts.

use crate::config::{Config, KIB, MIB};
use crate::harness::system::{cpu_count, kernel_release, load_average};
use std::time::Duration;

struct Row {
    workload: String,
    s3vol: String,
    raw: String,
    /// s3vol's rate divided by the raw rate (equivalently raw time / s3vol time):
    /// 1.0 is parity, 0.5 is half as fast.
    ratio: Option<f64>,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn add(
        &mut self,
        workload: impl Into<String>,
        s3vol: impl Into<String>,
        raw: impl Into<String>,
        ratio: Option<f64>,
    ) {
        let row = Row {
            workload: workload.into(),
            s3vol: s3vol.into(),
            raw: raw.into(),
            ratio,
        };
        println!(
            "  -> {}: s3vol {} | raw {} | ratio {}",
            row.workload,
            row.s3vol,
            row.raw,
            ratio_text(ratio)
        );
        self.rows.push(row);
    }

    pub fn markdown(&self, config: &Config) -> String {
        let mut out = String::from("# s3vol local benchmark\n\n");
        out += &format!(
            "`cargo bench --bench local` on {} CPUs, kernel {}, load average {} at the end; {}.\n\
             Ratio: s3vol's rate / the raw rate (1.00 = parity). See bench/README.md.\n\n",
            cpu_count(),
            kernel_release(),
            load_average(),
            config.describe()
        );
        out += "| workload | s3vol | raw baseline | ratio |\n|---|---|---|---|\n";
        for row in &self.rows {
            out += &format!(
                "| {} | {} | {} | {} |\n",
                row.workload,
                row.s3vol,
                row.raw,
                ratio_text(row.ratio)
            );
        }
        out
    }
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

pub fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    count as f64 / secs(elapsed).max(1e-9)
}

pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    per_sec(bytes, elapsed) / MIB as f64
}

pub fn rate_text(mib_per_sec: f64) -> String {
    format!("{mib_per_sec:.0} MiB/s")
}

pub fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= MIB => format!("{:.0} MiB", b as f64 / MIB as f64),
        b => format!("{} KiB", b / KIB),
    }
}

/// 10000 -> "10,000".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
