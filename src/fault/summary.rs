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

/// `, ramp 5s`, or nothing for no ramp.
pub fn ramp(r: Duration) -> String {
    if r.is_zero() {
        String::new()
    } else {
        format!(", ramp {}", dur(r))
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
