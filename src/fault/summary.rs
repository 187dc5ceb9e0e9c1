//! One line per fault effect, for `plan`, the terminal and the journal.

use std::time::Duration;

/// A duration as people write it (`1m 30s`), `0s` for none.
pub fn dur(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// One line describing a network fault's effect, for `plan`, the terminal and the journal.
pub fn effect_summary(effect: &super::NetworkAction) -> String {
    use super::NetworkAction::*;
    let pct = |f: f64| format!("{}%", (f * 10_000.0).round() / 100.0);
    match effect {
        Delay {
            delay,
            jitter,
            normal,
            correlation,
            backend,
        } => {
            let mut s = format!("delay {}", dur(*delay));
            if !jitter.is_zero() {
                s.push_str(&format!(
                    " ± {} {}",
                    dur(*jitter),
                    if *normal { "normal" } else { "uniform" }
                ));
            }
            if *correlation > 0.0 {
                s.push_str(&format!(", correlation {}", pct(*correlation)));
            }
            s.push_str(&format!(", backend {backend:?}").to_lowercase());
            s
        }
        Loss {
            probability,
            correlation,
        } if *correlation > 0.0 => {
            format!(
                "drop {} of packets, correlation {}",
                pct(*probability),
                pct(*correlation)
            )
        }
        Loss { probability, .. } => format!("drop {} of packets", pct(*probability)),
        Partition { reject: true } => "reject every packet (TCP reset / ICMP unreachable)".into(),
        Partition { reject: false } => "drop every packet".into(),
        Bandwidth {
            rate_bits_per_sec,
            burst_bytes,
        } => {
            let mut s = format!("cap at {} bit/s", rate_bits_per_sec);
            if let Some(b) = burst_bytes {
                s.push_str(&format!(", burst {b} bytes"));
            }
            s
        }
        Duplicate { probability } => format!("duplicate {} of packets", pct(*probability)),
        Corrupt { probability } => format!("corrupt {} of packets", pct(*probability)),
        Reorder {
            probability,
            delay,
            gap,
        } => format!(
            "reorder {} of packets (others delayed {}{})",
            pct(*probability),
            dur(*delay),
            gap.map(|g| format!(", gap {g}")).unwrap_or_default()
        ),
    }
}

/// One line describing a resource fault's effect.
pub fn resource_summary(effect: &super::ResourceAction) -> String {
    use super::{CoreSelection, IoMode, IoRate, MemorySize, ResourceAction::*};
    let pct = |f: f64| format!("{}%", (f * 10_000.0).round() / 100.0);
    let ramp = |r: &Duration| {
        if r.is_zero() {
            String::new()
        } else {
            format!(", ramp {}", dur(*r))
        }
    };
    match effect {
        CpuPressure {
            load,
            cores,
            total,
            ramp: r,
        } => format!(
            "{} {} on {}{}",
            if *total { "top up to" } else { "burn" },
            pct(*load),
            match cores {
                None => "every core".to_string(),
                Some(CoreSelection::Count(n)) => format!("{n} core(s)"),
                Some(CoreSelection::List(list)) => format!("cores {list:?}"),
            },
            ramp(r)
        ),
        CpuLimit { cpus } => format!("limit to {cpus} CPU(s)"),
        MemoryPressure {
            size,
            ramp: r,
            keep_free,
        } => format!(
            "hold {} resident (keeping {} free){}",
            match size {
                MemorySize::Bytes(b) => crate::units::bytes(*b),
                MemorySize::Share(s) => format!("{} of RAM", pct(*s)),
            },
            crate::units::bytes(*keep_free),
            ramp(r)
        ),
        DiskIoPressure {
            path,
            mode,
            block_size,
            rate,
            workers,
        } => format!(
            "{} in {} with {} blocks, {}, {workers} worker(s)",
            match mode {
                IoMode::Read => "read".to_string(),
                IoMode::Write => "write".to_string(),
                IoMode::Mixed(r) => format!("mixed ({} reads)", pct(*r)),
            },
            path.display(),
            crate::units::bytes(*block_size),
            match rate {
                IoRate::Max => "as fast as possible".to_string(),
                IoRate::BytesPerSec(b) => format!("{}/s", crate::units::bytes(*b)),
                IoRate::Iops(n) => format!("{n} IOPS"),
            }
        ),
        DiskIoLimit {
            path,
            read_bytes_per_sec,
            write_bytes_per_sec,
            read_iops,
            write_iops,
        } => {
            let mut caps = Vec::new();
            if let Some(b) = read_bytes_per_sec {
                caps.push(format!("read {}/s", crate::units::bytes(*b)));
            }
            if let Some(b) = write_bytes_per_sec {
                caps.push(format!("write {}/s", crate::units::bytes(*b)));
            }
            if let Some(n) = read_iops {
                caps.push(format!("read {n} IOPS"));
            }
            if let Some(n) = write_iops {
                caps.push(format!("write {n} IOPS"));
            }
            format!(
                "limit I/O on the device of {} to {}",
                path.display(),
                caps.join(", ")
            )
        }
    }
}
