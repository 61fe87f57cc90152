//! Job files: several SQL statements run in order, with Spark-style variables.
//!
//! `SET key=value;` for a key that is not an engine setting (`datafusion.*`,
//! `ballista.*`) defines a variable; `${key}` is replaced by its value in every
//! later statement; `--var key=value` on the command line defines one before
//! the first statement. A `${key}` nothing defined is an error naming it.
//!
//! Statements are classified here so the runner can send writes through
//! sluice's distributed writer: `INSERT OVERWRITE DIRECTORY '<url>' USING
//! <format> [OPTIONS (...)] <query>` (Spark) and `COPY <query> TO '<url>' ...`
//! (DataFusion). Everything else is plain SQL for DataFusion.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use datafusion::sql::parser::{CopyToSource, DFParser, Statement as DfStatement};
use regex::Regex;

use crate::error::SluiceError;
use crate::sink::files::WriteFormat;

/// One statement of a job file, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStatement {
    pub line: usize,
    pub text: String,
}

/// Splits a file on `;`, ignoring semicolons in quotes and comments, and drops
/// statements that hold only comments.
pub fn split_statements(source: &str) -> Vec<RawStatement> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    let mut line = 1;
    let mut has_code = false;
    let mut chars = source.chars().peekable();
    let mut flush = |current: &mut String, has_code: &mut bool, start_line: usize| {
        if *has_code {
            out.push(RawStatement {
                line: start_line,
                text: current.trim().to_string(),
            });
        }
        current.clear();
        *has_code = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                if !has_code {
                    start_line = line;
                }
                has_code = true;
                current.push(c);
                for q in chars.by_ref() {
                    current.push(q);
                    if q == '\n' {
                        line += 1;
                    }
                    if q == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                        current.push('\n');
                    }
                    if prev == '*' && q == '/' {
                        break;
                    }
                    prev = q;
                }
                current.push(' ');
            }
            ';' => flush(&mut current, &mut has_code, start_line),
            '\n' => {
                line += 1;
                current.push(c);
            }
            c => {
                if !c.is_whitespace() && !has_code {
                    has_code = true;
                    start_line = line;
                }
                current.push(c);
            }
        }
    }
    flush(&mut current, &mut has_code, start_line);
    out
}

/// The job file's patterns, compiled once. They are constants, but a
/// failure to build one must be an error, not a silently skipped feature.
struct Patterns {
    var_ref: Regex,
    set: Regex,
    insert_dir: Regex,
    option: Regex,
}

static PATTERNS: LazyLock<Result<Patterns, regex::Error>> = LazyLock::new(|| {
    Ok(Patterns {
        var_ref: Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")?,
        set: Regex::new(r"(?is)^SET\s+([A-Za-z_][A-Za-z0-9_.\-]*)\s*(?:=|\s+TO\s+)\s*(.*?)\s*$")?,
        insert_dir: Regex::new(
            r"(?is)^INSERT\s+OVERWRITE\s+(?:LOCAL\s+)?DIRECTORY\s+'([^']*)'\s+(?:USING|STORED\s+AS)\s+([A-Za-z]+)\s*(?:OPTIONS\s*\(((?:'[^']*'|[^)'])*)\)\s*)?(.*)$",
        )?,
        option: Regex::new(
            r#"(?s)\s*(?:'([^']*)'|"([^"]*)"|([A-Za-z0-9_.]+))\s*(?:=\s*)?(?:'([^']*)'|"([^"]*)"|([A-Za-z0-9_.\-]+))\s*(?:,|$)"#,
        )?,
    })
});

fn patterns() -> Result<&'static Patterns, SluiceError> {
    PATTERNS
        .as_ref()
        .map_err(|e| SluiceError::Internal(format!("a job-file pattern does not compile: {e}")))
}

/// Replaces every `${name}`; the first unknown name is an error.
pub fn substitute(
    text: &str,
    vars: &HashMap<String, String>,
    file: &str,
    line: usize,
) -> Result<String, SluiceError> {
    let re = &patterns()?.var_ref;
    if let Some(missing) = re
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .find(|m| !vars.contains_key(m.as_str()))
    {
        let before = &text[..missing.start()];
        return Err(SluiceError::UnknownVariable {
            file: file.to_string(),
            line: line + before.matches('\n').count(),
            name: missing.as_str().to_string(),
        });
    }
    Ok(re
        .replace_all(text, |c: &regex::Captures| {
            c.get(1)
                .and_then(|m| vars.get(m.as_str()))
                .cloned()
                .unwrap_or_default()
        })
        .into_owned())
}

/// What a statement asks the runner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Define a job variable.
    SetVar { key: String, value: String },
    /// Write the result of `query` to `url` through the distributed writer.
    Write {
        query: String,
        url: String,
        format: WriteFormat,
        overwrite: bool,
        options: BTreeMap<String, String>,
        partition_by: Vec<String>,
    },
    /// Anything else: DDL, engine `SET`, queries whose rows are printed.
    Sql(String),
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['\'', '"'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Settings the engine takes (`SET datafusion.x = ...`, `SET time_zone`);
/// any other `SET` defines a job variable.
fn is_engine_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["datafusion.", "ballista."]
        .iter()
        .any(|p| key.starts_with(p))
        || ["time_zone", "timezone"].contains(&key.as_str())
}

fn parse_options(
    raw: &str,
    file: &str,
    line: usize,
) -> Result<BTreeMap<String, String>, SluiceError> {
    let mut out = BTreeMap::new();
    let re = &patterns()?.option;
    let mut consumed = 0;
    for cap in re.captures_iter(raw) {
        let whole = cap.get(0).map(|m| m.end()).unwrap_or(0);
        consumed = whole;
        let key = cap.get(1).or(cap.get(2)).or(cap.get(3)).map(|m| m.as_str());
        let value = cap.get(4).or(cap.get(5)).or(cap.get(6)).map(|m| m.as_str());
        if let (Some(k), Some(v)) = (key, value) {
            out.insert(k.to_ascii_lowercase(), v.to_string());
        }
    }
    if raw[consumed..].trim().is_empty() {
        Ok(out)
    } else {
        Err(SluiceError::Syntax {
            file: file.to_string(),
            line,
            message: format!("cannot read OPTIONS ({raw}); write them as ('key' 'value', ...)"),
        })
    }
}

/// Classifies one statement (after variable substitution).
pub fn classify(text: &str, file: &str, line: usize) -> Result<Action, SluiceError> {
    let syntax = |message: String| SluiceError::Syntax {
        file: file.to_string(),
        line,
        message,
    };
    let patterns = patterns()?;
    if let Some(c) = patterns.set.captures(text) {
        let key = c.get(1).map(|m| m.as_str()).unwrap_or_default();
        let value = c.get(2).map(|m| m.as_str()).unwrap_or_default();
        if !is_engine_setting(key) {
            return Ok(Action::SetVar {
                key: key.to_string(),
                value: unquote(value),
            });
        }
        return Ok(Action::Sql(text.to_string()));
    }
    if let Some(c) = patterns.insert_dir.captures(text) {
        let url = c.get(1).map(|m| m.as_str()).unwrap_or_default();
        let format = c.get(2).map(|m| m.as_str()).unwrap_or_default();
        let options = match c.get(3) {
            Some(o) => parse_options(o.as_str(), file, line)?,
            None => BTreeMap::new(),
        };
        let query = c.get(4).map(|m| m.as_str().trim()).unwrap_or_default();
        if query.is_empty() {
            return Err(syntax(
                "INSERT OVERWRITE DIRECTORY needs a query after the format".into(),
            ));
        }
        return Ok(Action::Write {
            query: query.to_string(),
            url: url.to_string(),
            format: WriteFormat::parse(format)?,
            overwrite: true,
            options,
            partition_by: vec![],
        });
    }
    let first_word = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if first_word == "COPY" {
        let mut statements = DFParser::parse_sql(text).map_err(|e| syntax(e.to_string()))?;
        if let Some(DfStatement::CopyTo(copy)) = statements.pop_front() {
            let query = match &copy.source {
                CopyToSource::Relation(name) => format!("SELECT * FROM {name}"),
                CopyToSource::Query(q) => q.to_string(),
            };
            let format = match &copy.stored_as {
                Some(f) => f.clone(),
                None => std::path::Path::new(&copy.target)
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| syntax("COPY needs STORED AS <format>".into()))?,
            };
            let mut options = BTreeMap::new();
            for (k, v) in &copy.options {
                let v = v.to_string();
                options.insert(k.to_ascii_lowercase(), unquote(&v));
            }
            return Ok(Action::Write {
                query,
                url: copy.target.clone(),
                format: WriteFormat::parse(&format)?,
                overwrite: false,
                options,
                // A quoted name keeps its case: `PARTITIONED BY ("LivestreamID")`.
                partition_by: copy
                    .partitioned_by
                    .iter()
                    .map(
                        |c| match c.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
                            Some(quoted) => quoted.replace("\"\"", "\""),
                            None => c.clone(),
                        },
                    )
                    .collect(),
            });
        }
    }
    Ok(Action::Sql(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_engine_settings_go_to_the_engine() -> Result<(), SluiceError> {
        for (text, engine) in [
            ("SET timeout = 5", false),
            ("SET times TO 'x'", false),
            ("SET time_zone = '+02:00'", true),
            ("SET datafusion.execution.batch_size = 100", true),
            ("SET ballista.job.name = 'x'", true),
        ] {
            let action = classify(text, "job.sql", 1)?;
            assert_eq!(
                matches!(action, Action::Sql(_)),
                engine,
                "{text}: {action:?}"
            );
        }
        assert_eq!(
            classify("SET timeout=5", "job.sql", 1)?,
            Action::SetVar {
                key: "timeout".into(),
                value: "5".into()
            }
        );
        Ok(())
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let src = "-- header; not a statement\nSET a=1;\nSELECT 'x;y' AS s; /* c; */\n\nSELECT 2\n";
        let st = split_statements(src);
        assert_eq!(st.len(), 3);
        assert_eq!(
            st[0],
            RawStatement {
                line: 2,
                text: "SET a=1".into()
            }
        );
        assert_eq!(st[1].text, "SELECT 'x;y' AS s");
        assert_eq!(st[1].line, 3);
        assert_eq!(st[2].line, 5);
    }

    #[test]
    fn unknown_variable_is_named_with_its_line() {
        let vars = HashMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(
            substitute("x ${a} y", &vars, "j.sql", 1).ok(),
            Some("x 1 y".into())
        );
        let err = substitute("x\n${b}", &vars, "j.sql", 4)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("j.sql:5: unknown variable ${b} (set it with `SET b=...;` or `--var b=...`)")
        );
    }

    #[test]
    fn classifies_spark_and_datafusion_writes() -> Result<(), SluiceError> {
        let a = classify(
            "INSERT OVERWRITE DIRECTORY '/tmp/o' USING PARQUET SELECT * FROM range(0, 10, 1, 2)",
            "j",
            1,
        )?;
        match a {
            Action::Write {
                url,
                overwrite,
                query,
                ..
            } => {
                assert_eq!(url, "/tmp/o");
                assert!(overwrite);
                assert_eq!(query, "SELECT * FROM range(0, 10, 1, 2)");
            }
            other => return Err(SluiceError::Config(format!("{other:?}"))),
        }
        let c = classify(
            "COPY (SELECT 1 AS x) TO '/tmp/c' STORED AS PARQUET OPTIONS ('compression' 'snappy')",
            "j",
            1,
        )?;
        match c {
            Action::Write {
                url,
                overwrite,
                options,
                ..
            } => {
                assert_eq!(url, "/tmp/c");
                assert!(!overwrite);
                assert_eq!(
                    options.get("compression").map(String::as_str),
                    Some("snappy")
                );
            }
            other => return Err(SluiceError::Config(format!("{other:?}"))),
        }
        // Parentheses inside quoted option values do not end the list.
        match classify(
            "INSERT OVERWRITE DIRECTORY '/o' USING PARQUET OPTIONS ('compression' 'zstd(3)', 'x' 'a)b') SELECT 1",
            "j",
            1,
        )? {
            Action::Write { options, query, .. } => {
                assert_eq!(
                    options.get("compression").map(String::as_str),
                    Some("zstd(3)")
                );
                assert_eq!(options.get("x").map(String::as_str), Some("a)b"));
                assert_eq!(query, "SELECT 1");
            }
            other => return Err(SluiceError::Config(format!("{other:?}"))),
        }
        assert_eq!(
            classify("SET rows = 100", "j", 1)?,
            Action::SetVar {
                key: "rows".into(),
                value: "100".into()
            }
        );
        assert!(matches!(
            classify("SET datafusion.execution.batch_size = 100", "j", 1)?,
            Action::Sql(_)
        ));
        assert!(classify("INSERT OVERWRITE DIRECTORY '/x' USING ORC SELECT 1", "j", 1).is_err());
        Ok(())
    }
}
