//! After a run, prints the medians criterion saved (rows measured by this run only) and
//! their ratio to each baseline, in a form the README and BENCHMARKS.md can quote.
//! Shared by the benches with `#[path]`.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    Path::new(&target).join("criterion")
}

/// The median point estimate (ns) in an `estimates.json`, without a JSON parser.
fn median(json: &str) -> Option<f64> {
    let rest = &json[json.find("\"median\"")?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

/// `(row id, median ns)` for every row of `group` written since `since`.
fn rows(group: &str, since: SystemTime) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    let mut stack = vec![criterion_dir().join(group)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "report") {
                stack.push(path);
                continue;
            }
            if !path.ends_with("new/estimates.json") {
                continue;
            }
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            let value = std::fs::read_to_string(&path).ok().and_then(|j| median(&j));
            if let (true, Some(value)) = (fresh, value) {
                let id = path.parent().and_then(Path::parent).unwrap_or(&path);
                let id = id.strip_prefix(criterion_dir()).unwrap_or(id);
                found.push((id.display().to_string(), value));
            }
        }
    }
    found.sort_by_key(|(id, _)| natural(id));
    found
}

fn rows_of(group: &str, since: SystemTime, id: &str) -> Option<f64> {
    rows(group, since)
        .into_iter()
        .find(|(row, _)| row == id)
        .map(|(_, median)| median)
}

/// Sort key: numeric path parts compare as numbers.
fn natural(id: &str) -> Vec<(String, u64)> {
    id.split('/')
        .map(|part| match part.parse() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_owned(), 0),
        })
        .collect()
}

/// Prints one table per `(group, baselines)` with fresh rows; each row's median is
/// divided by each baseline's (a full row id such as `get/thread_local`).
pub(crate) fn print(since: SystemTime, tables: &[(&str, &[&str])]) {
    let mut printed = false;
    for (group, baselines) in tables {
        let rows = rows(group, since);
        if rows.is_empty() {
            continue;
        }
        let base: Vec<(&str, Option<f64>)> = baselines
            .iter()
            .map(|id| {
                let group = id.split('/').next().unwrap_or(id);
                let median = rows_of(group, since, id);
                (*id, median)
            })
            .collect();
        if !printed {
            println!("\nMedians (ns) of this run, and ratio to each baseline:");
            printed = true;
        }
        print!("\n{:<36} {:>10}", "row", "median ns");
        for (name, _) in &base {
            print!(" {:>24}", format!("/ {name}"));
        }
        println!();
        for (id, median) in &rows {
            print!("{id:<36} {median:>10.2}");
            for (_, base) in &base {
                match base {
                    Some(b) => print!(" {:>23.2}x", median / b),
                    None => print!(" {:>24}", "-"),
                }
            }
            println!();
        }
    }
}
