//! `orchestrator pivot`: an export to a file, through a running
//! orchestrator's API (`GET /api/v1/pivot/export`, the same code as the
//! endpoint), or with `--offline` straight from the archive folders of the
//! configuration, no orchestrator running.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use speeddata_api::pivot::PivotQuery;

use crate::channel_cmd::{Client, Failure};
use crate::config::{self, Config};
use crate::pivot::{request, Refused};

/// The query from the command line's parameters, parsed as the endpoint
/// parses them; an error names the flag.
pub fn query(pairs: &[(String, String)]) -> Result<PivotQuery, Failure> {
    PivotQuery::parse(pairs, std::time::SystemTime::now())
        .map_err(|e| Failure::new(2, format!("--{}: {}", e.field, e.message)))
}

/// Writes `out` through a temporary name beside it, renamed when whole:
/// an export that fails leaves no half file under the name asked for.
fn write_to(
    out: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> Result<String, Failure>,
) -> Result<String, Failure> {
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".part");
    let tmp = std::path::PathBuf::from(tmp_name);
    let file = File::create(&tmp)
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", tmp.display())))?;
    let mut w = BufWriter::new(file);
    let result = f(&mut w).and_then(|text| {
        w.flush()
            .and_then(|()| std::fs::rename(&tmp, out))
            .map_err(|e| Failure::failed(format!("cannot write {}: {e}", out.display())))?;
        Ok(text)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Through the API of `client`.
pub fn through_api(client: &Client, q: &PivotQuery, out: &Path) -> Result<String, Failure> {
    write_to(out, |w| {
        let (bytes, empty) = client.pivot(q, w)?;
        let mut text = format!("wrote {} ({bytes} bytes)", out.display());
        if !empty.is_empty() {
            text.push_str(&format!("; no data in the range: {}", empty.join(", ")));
        }
        Ok(text)
    })
}

/// Straight from the archive folders of `cfg`'s channels.
pub fn offline(cfg: &Config, q: &PivotQuery, out: &Path) -> Result<String, Failure> {
    let fleet = config::load_fleet(cfg)
        .map_err(|e| Failure::new(78, format!("{}: {e}", cfg.channels_dir.display())))?;
    let req = request(q, |name| {
        fleet
            .channels
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.spec.clone())
    })
    .map_err(|r| match r {
        Refused::NotFound(m) => Failure::failed(format!("{m} in {}", cfg.channels_dir.display())),
        Refused::TooLarge(m) => Failure::failed(m),
        Refused::Bad(e) => Failure::failed(e.message),
    })?;
    let plan = speeddata_pivot::plan(&req).map_err(|e| match e.field {
        Some(f) => Failure::new(2, format!("--{f}: {}", e.message)),
        None => Failure::failed(e.message),
    })?;
    let empty: Vec<String> = plan
        .empty_channels()
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_to(out, |w| {
        let file = w
            .get_ref()
            .try_clone()
            .map_err(|e| Failure::failed(e.to_string()))?;
        let summary = plan
            .write(BufWriter::new(file))
            .map_err(|e| Failure::failed(format!("export failed: {e}")))?;
        let rows: Vec<String> = summary
            .rows
            .iter()
            .map(|(c, n)| format!("{c}: {n} rows"))
            .collect();
        let mut text = format!("wrote {} ({})", out.display(), rows.join(", "));
        if !empty.is_empty() {
            text.push_str(&format!("; no data in the range: {}", empty.join(", ")));
        }
        Ok(text)
    })
}
