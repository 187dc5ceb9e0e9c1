//! Secrets an experiment names and its probes send: a bearer token, a password. The file says
//! where each comes from (`secrets: {token: {env: API_TOKEN}}` or `{file: /run/secrets/t}`)
//! and uses it as `${secret.token}` in a probe's URL, headers or command env; the value is
//! read when the run starts, put into the probes that send it, and written out nowhere: every
//! line faultline writes (journal, reports, terminal) has each value replaced by its
//! `${secret.NAME}` again, so an error that quotes a URL or a program's output quotes no secret.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// A value shorter than this could not be told apart from ordinary text when redacting.
pub const MIN_SECRET_LEN: usize = 6;
/// A secret file holds a token or a password, not a document.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where a secret's value is read from when a run starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// An environment variable of the `faultline run` process.
    Env(String),
    /// A file's contents, without the final newline (`/run/secrets/api-token`).
    File(String),
}

/// The values of a run's secrets.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Name and value, longest value first (so a value that contains another is redacted
    /// whole).
    values: Vec<(String, String)>,
}

impl Secrets {
    /// Read every secret; the first one that cannot be read says why.
    pub fn read(sources: &BTreeMap<String, SecretSource>) -> Result<Secrets, String> {
        let mut values = Vec::new();
        for (name, source) in sources {
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|e| {
                    format!("secret `{name}`: the environment variable {var} is {e}")
                })?,
                SecretSource::File(path) => {
                    let text = crate::sys::file::read_regular(
                        Path::new(path),
                        MAX_SECRET_FILE_BYTES,
                        "secret file",
                    )
                    .map_err(|e| format!("secret `{name}`: {e}"))?;
                    text.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text)
                        .to_string()
                }
            };
            if value.chars().count() < MIN_SECRET_LEN {
                return Err(format!(
                    "secret `{name}` is shorter than {MIN_SECRET_LEN} characters: faultline \
                     removes secrets from everything it writes, and cannot tell one this short \
                     from ordinary text"
                ));
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(format!(
                    "secret `{name}` holds a line break or a NUL byte; a header or an env value \
                     cannot carry it"
                ));
            }
            values.push((name.clone(), value));
        }
        values.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        Ok(Secrets { values })
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with each `${secret.NAME}` replaced by the secret's value.
    pub fn reveal(&self, text: &str) -> String {
        let mut revealed = text.to_string();
        for (name, value) in &self.values {
            revealed = revealed.replace(&placeholder(name), value);
        }
        revealed
    }

    /// `text` with each secret's value replaced by `${secret.NAME}`: as written, as a URL in
    /// an error shows it (percent-encoded) and as a JSON string holds it (escaped).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut redacted = Cow::Borrowed(text);
        for (name, value) in &self.values {
            let escaped = serde_json::to_string(value).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_string();
            for form in [value.clone(), percent_encoded(value), escaped] {
                if redacted.contains(form.as_str()) {
                    redacted = Cow::Owned(redacted.replace(form.as_str(), &placeholder(name)));
                }
            }
        }
        redacted
    }
}

pub fn placeholder(name: &str) -> String {
    format!("${{secret.{name}}}")
}

/// The names of the `${secret.NAME}` references in `text`.
pub fn references(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${secret.") {
        let after = &rest[at + "${secret.".len()..];
        match after.find('}') {
            Some(close) => {
                names.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    names
}

fn percent_encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The secrets of the run under way, for everything that writes text out.
static REDACTION: RwLock<Option<Secrets>> = RwLock::new(None);

/// From now on [`redact`] hides these values (a game day adds each experiment's).
pub fn hide(secrets: &Secrets) {
    let mut current = REDACTION.write().unwrap_or_else(|p| p.into_inner());
    let all = current.get_or_insert_with(Secrets::default);
    for (name, value) in &secrets.values {
        if !all.values.iter().any(|(_, v)| v == value) {
            all.values.push((name.clone(), value.clone()));
        }
    }
    all.values
        .sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
}

/// `text` without any secret of the run under way.
pub fn redact(text: &str) -> Cow<'_, str> {
    let current = REDACTION.read().unwrap_or_else(|p| p.into_inner());
    match current.as_ref() {
        Some(secrets) if !secrets.is_empty() => Cow::Owned(secrets.redact(text).into_owned()),
        _ => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_revealed_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t/t0ken+x\n").unwrap();
        let mut sources = BTreeMap::new();
        sources.insert(
            "token".to_string(),
            SecretSource::File(file.display().to_string()),
        );
        let secrets = Secrets::read(&sources).unwrap();
        assert_eq!(
            secrets.reveal("Bearer ${secret.token}"),
            "Bearer s3cr3t/t0ken+x"
        );
        assert_eq!(
            secrets.redact("error for http://h/?t=s3cr3t%2Ft0ken%2Bx and s3cr3t/t0ken+x"),
            "error for http://h/?t=${secret.token} and ${secret.token}"
        );
        assert_eq!(
            references("a ${secret.one} b ${secret.two}"),
            ["one", "two"]
        );
        let mut quoted = BTreeMap::new();
        std::fs::write(&file, "pa\"ss\\word\n").unwrap();
        quoted.insert(
            "pw".to_string(),
            SecretSource::File(file.display().to_string()),
        );
        let secrets = Secrets::read(&quoted).unwrap();
        let json = serde_json::to_string(&secrets.reveal("${secret.pw}")).unwrap();
        assert_eq!(secrets.redact(&json), "\"${secret.pw}\"");

        std::fs::write(&file, "short\n").unwrap();
        assert!(
            Secrets::read(&sources)
                .unwrap_err()
                .contains("shorter than 6")
        );
        sources.insert(
            "token".to_string(),
            SecretSource::Env("FAULTLINE_NO_SUCH_SECRET_VAR".into()),
        );
        let missing = Secrets::read(&sources).unwrap_err();
        assert!(
            missing.contains("FAULTLINE_NO_SUCH_SECRET_VAR"),
            "{missing}"
        );
    }
}
