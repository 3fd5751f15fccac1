//! Plain-text tables and value formatting for the CLI.

use serde_json::Value;

/// Prints rows as a left-aligned table with a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

pub(crate) use agentmesh::cli::sample_agents::human;

/// Parses a CLI argument as JSON, or takes it as a plain string.
pub(crate) fn json_arg(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Joins the strings of a JSON array.
pub(crate) fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(human).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}
