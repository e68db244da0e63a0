//! What Redis executed, from `INFO commandstats`: for tests that count a step's commands.

use std::collections::BTreeMap;

/// Calls of each command since the last `CONFIG RESETSTAT` (commands run inside scripts
/// included), by name; `CONFIG` and `INFO` themselves left out.
pub async fn command_calls(connection: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(connection).await.expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|field| field.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

/// `CONFIG RESETSTAT`: counting starts again.
pub async fn reset_command_calls(connection: &mut redis::aio::MultiplexedConnection) {
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(connection).await.expect("CONFIG RESETSTAT");
}
