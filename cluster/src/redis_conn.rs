//! The one way this crate opens its shared Redis connection: a multiplexed
//! [`ConnectionManager`] that reconnects by itself, with explicit connect and response
//! timeouts (redis-rs's default response timeout would cut blocking commands at 500 ms;
//! blocking reads use their own connections, never this one), and a bounded first
//! connect so a node learns at once that Redis is not there.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

/// Open `url` and connect, within twice `connect_timeout`. The error is a message for
/// the caller's `Unavailable` variant.
pub(crate) async fn connect_shared(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(Client, ConnectionManager), String> {
    let client = Client::open(url).map_err(|e| format!("redis: {e}"))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let connecting = ConnectionManager::new_with_config(client.clone(), manager_config);
    let manager = tokio::time::timeout(connect_timeout * 2, connecting)
        .await
        .map_err(|_| "redis: connect timed out".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
    Ok((client, manager))
}
