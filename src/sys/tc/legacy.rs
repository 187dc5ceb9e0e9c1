//! Records written before faultline's tc trees were shared: one root (and ingress) qdisc per
//! fault. Only removal is left, so that `recover` after an upgrade still restores a host a
//! crashed older run left shaped.

use serde::{Deserialize, Serialize};

use super::{ROOT_HANDLE, TcError, first_qdisc, link_exists, qdisc_show, run, strings};
use crate::sys::netns::{self, Netns};

/// One change an old record lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum LegacyStep {
    CreateIfb {
        name: String,
    },
    RootQdisc {
        dev: String,
        before: String,
    },
    IngressQdisc {
        dev: String,
        ifb: String,
        before: String,
    },
    /// Classes, leaf qdiscs and filters went with their parent.
    InTree {},
}

/// What an old record says one fault installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegacyTcInstall {
    pub netns: Option<Netns>,
    pub steps: Vec<LegacyStep>,
}

impl LegacyTcInstall {
    /// Undo every step newest first, whatever part exists, then check each device's qdiscs
    /// are what they were before.
    pub fn remove(&self) -> Result<(), TcError> {
        let ns = self.netns.as_ref();
        if let Some(name) = ns
            && !netns::exists(name)
        {
            return Ok(());
        }
        let mut problems = Vec::new();
        for step in self.steps.iter().rev() {
            let undone = match step {
                LegacyStep::CreateIfb { name } if link_exists(ns, name) => {
                    run(ns, "ip", &strings(&["link", "del", "dev", name])).map(drop)
                }
                LegacyStep::RootQdisc { dev, .. } => remove_root(ns, dev),
                LegacyStep::IngressQdisc { dev, ifb, .. } => remove_ingress(ns, dev, ifb),
                _ => Ok(()),
            };
            if let Err(e) = undone {
                problems.push(e.to_string());
            }
        }
        for step in &self.steps {
            match step {
                LegacyStep::CreateIfb { name } if link_exists(ns, name) => {
                    problems.push(format!("IFB device {name} still exists"));
                }
                LegacyStep::RootQdisc { dev, before }
                | LegacyStep::IngressQdisc { dev, before, .. } => match qdisc_show(ns, dev) {
                    Ok(Some(now)) if now != *before => problems.push(format!(
                        "qdiscs on {dev} differ from before the fault: before `{}`, now `{}`",
                        before.trim(),
                        now.trim()
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push(e.to_string()),
                },
                _ => {}
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TcError::NotRestored(problems))
        }
    }
}

/// Delete faultline's old-style root: a shaper at `fa17:` itself, or an htb over an `fa18:`
/// leaf. Today's shared tree (htb over `e...:` chains) is never taken for one.
fn remove_root(ns: Option<&Netns>, dev: &str) -> Result<(), TcError> {
    let Some(root) = first_qdisc(ns, dev, "root")? else {
        return Ok(());
    };
    let old_shape = root.kind != "htb"
        || qdisc_show(ns, dev)?
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(super::LEAF_HANDLE));
    if root.handle == ROOT_HANDLE && old_shape {
        run(ns, "tc", &strings(&["qdisc", "del", "dev", dev, "root"]))?;
    }
    Ok(())
}

fn remove_ingress(ns: Option<&Netns>, dev: &str, ifb: &str) -> Result<(), TcError> {
    if first_qdisc(ns, dev, "ingress")?.is_none() {
        return Ok(());
    }
    let filters = run(
        ns,
        "tc",
        &strings(&["filter", "show", "dev", dev, "ingress"]),
    )?;
    let ours = format!("to device {ifb})");
    if filters
        .lines()
        .any(|l| l.contains("action order") && !l.contains(&ours))
    {
        return Err(TcError::NotRestored(vec![format!(
            "the ingress qdisc on {dev} has filters faultline did not add; left in place"
        )]));
    }
    run(ns, "tc", &strings(&["qdisc", "del", "dev", dev, "ingress"])).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the previous version wrote it (a delay on one interface).
    #[test]
    fn old_records_still_deserialise() {
        let json = r#"{"netns":"ns1","steps":[
            {"step":"root_qdisc","dev":"v0","tc":["qdisc","add","dev","v0","root","handle","fa17:","htb"],"before":"qdisc noqueue 0: dev v0 root refcnt 2 \n"},
            {"step":"in_tree","dev":"v0","tc":["class","add"]},
            {"step":"create_ifb","name":"flifbab12cd34-0"},
            {"step":"ingress_qdisc","dev":"v0","ifb":"flifbab12cd34-0","tc":[],"before":""}]}"#;
        let install: LegacyTcInstall = serde_json::from_str(json).unwrap();
        assert_eq!(install.steps.len(), 4);
        assert!(matches!(&install.steps[0], LegacyStep::RootQdisc { dev, .. } if dev == "v0"));
        // Its namespace is long gone: nothing to do.
        install.remove().unwrap();
    }
}
