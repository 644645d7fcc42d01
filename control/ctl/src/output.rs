//! Printing answers: JSON for scripts, aligned tables for people.

use serde_json::Value;

/// An answer and how to show it to a person.
pub struct Output {
    value: Value,
    human: fn(&Value) -> String,
}

impl Output {
    pub fn new(value: Value, human: fn(&Value) -> String) -> Self {
        Output { value, human }
    }

    /// Shown as JSON either way.
    pub fn json_only(value: Value) -> Self {
        Output {
            value,
            human: pretty,
        }
    }

    pub fn print(&self, json: bool) {
        let text = if json {
            pretty(&self.value)
        } else {
            (self.human)(&self.value)
        };
        if text.ends_with('\n') {
            print!("{text}");
        } else {
            println!("{text}");
        }
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A plain text table with a header, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A field of `v` as display text ("-" when absent).
pub fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "-".into(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

/// A byte count in the largest binary unit that keeps it readable.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn methods_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let params = m
                        .get("params")
                        .and_then(Value::as_array)
                        .map(|ps| {
                            ps.iter()
                                .map(|p| {
                                    let n = field(p, "name");
                                    if p.get("required") == Some(&Value::Bool(true)) {
                                        n
                                    } else {
                                        format!("[{n}]")
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        field(m, "name"),
                        field(m, "module"),
                        params,
                        field(m, "description"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["METHOD", "MODULE", "PARAMS", "DESCRIPTION"], &rows)
}

/// "true" answers as a short confirmation.
pub fn done(_: &Value) -> String {
    "ok".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "SIZE"],
            &[
                vec!["m0".into(), "1 GiB".into()],
                vec!["longer".into(), "4 KiB".into()],
            ],
        );
        assert_eq!(t, "NAME    SIZE\nm0      1 GiB\nlonger  4 KiB\n");
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
    }
}
