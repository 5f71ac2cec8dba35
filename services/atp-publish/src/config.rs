//! The publisher's configuration: one TOML file, read into [`Config`] and
//! checked whole at start-up. Every problem names its key
//! (`channels[1].batch_max`), and every size has a limit.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Most atpd endpoints listed.
pub const MAX_ENDPOINTS: usize = 16;
/// Most channels one publisher follows.
pub const MAX_CHANNELS: usize = 64;
/// Longest channel id (it names the cursor file too).
pub const MAX_CHANNEL_ID_CHARS: usize = 128;
/// Longest URL (endpoint or receiver).
pub const MAX_URL_CHARS: usize = 2048;
/// Largest `batch_max`.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// Largest `flush_interval_ms`.
pub const MAX_FLUSH_INTERVAL_MS: u64 = 60_000;
/// Range of `request_timeout_ms`.
pub const REQUEST_TIMEOUT_MS_RANGE: (u64, u64) = (10, 600_000);
/// Range of `max_backoff_ms`.
pub const MAX_BACKOFF_MS_RANGE: (u64, u64) = (10, 600_000);
/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7080";
const DEFAULT_BATCH_MAX: usize = 500;
const DEFAULT_FLUSH_INTERVAL_MS: u64 = 50;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_BACKOFF_MS: u64 = 5_000;

/// The whole checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// atpd nodes, any of which serves the whole cluster (tried in turn).
    pub atp_endpoints: Vec<String>,
    /// Where the cursors are kept (one file per channel).
    pub state_dir: PathBuf,
    /// Where the admin HTTP API listens.
    pub admin_listen: SocketAddr,
    /// The channels followed.
    pub channels: Vec<ChannelConfig>,
}

/// One followed channel and where its figures go.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// The atp channel id.
    pub channel_id: String,
    /// The HTTP endpoint receiving the channel's figures (plain `http://`).
    pub url: hyper::Uri,
    /// Most items in one push.
    pub batch_max: usize,
    /// How long changes gather before a push when none is in flight.
    pub flush_interval: Duration,
    /// A push not answered within this is a failure (and retried).
    pub request_timeout: Duration,
    /// The longest pause between two attempts (pushes and reconnects).
    pub max_backoff: Duration,
}

/// A configuration that cannot be used, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Over [`MAX_CONFIG_BYTES`].
    #[error("the config file {path} is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML, an unknown key or a value of the wrong type.
    #[error("parsing the config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and the line).
        #[source]
        source: toml::de::Error,
    },
    /// A value out of its range or malformed.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key, e.g. `channels[0].batch_max`.
        key: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    atp_endpoints: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    admin_listen: Option<String>,
    channels: Option<Vec<RawChannel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    channel_id: Option<String>,
    url: Option<String>,
    batch_max: Option<i64>,
    flush_interval_ms: Option<i64>,
    request_timeout_ms: Option<i64>,
    max_backoff_ms: Option<i64>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned() });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        Self::check(raw)
    }

    /// Parses and checks `text` (for tests and `load`).
    #[cfg(test)]
    fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: PathBuf::from("test.toml"), source })?;
        Self::check(raw)
    }

    fn check(raw: RawConfig) -> Result<Self, ConfigError> {
        let endpoints = raw.atp_endpoints.ok_or_else(|| {
            invalid(
                "atp_endpoints",
                "missing: list at least one atpd, e.g. [\"http://127.0.0.1:50051\"]",
            )
        })?;
        if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
            return Err(invalid(
                "atp_endpoints",
                format!("has {} entries; give 1 to {MAX_ENDPOINTS}", endpoints.len()),
            ));
        }
        for (index, endpoint) in endpoints.iter().enumerate() {
            // Plain gRPC: this build of tonic has no TLS.
            check_url(&format!("atp_endpoints[{index}]"), endpoint, &["http"])?;
        }
        let state_dir = raw
            .state_dir
            .ok_or_else(|| invalid("state_dir", "missing: the directory where cursors are kept"))?;
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "is empty"));
        }
        let admin_listen = raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let admin_listen: SocketAddr = admin_listen.parse().map_err(|_| {
            invalid("admin_listen", format!("{admin_listen:?} is not an IP:PORT address"))
        })?;
        let raw_channels = raw.channels.unwrap_or_default();
        if raw_channels.is_empty() || raw_channels.len() > MAX_CHANNELS {
            return Err(invalid(
                "channels",
                format!(
                    "has {} entries; give 1 to {MAX_CHANNELS} [[channels]]",
                    raw_channels.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        let mut channels = Vec::with_capacity(raw_channels.len());
        for (index, raw) in raw_channels.into_iter().enumerate() {
            let channel = check_channel(index, raw)?;
            if !seen.insert(channel.channel_id.clone()) {
                return Err(invalid(
                    format!("channels[{index}].channel_id"),
                    format!("{:?} is listed twice", channel.channel_id),
                ));
            }
            channels.push(channel);
        }
        Ok(Self { atp_endpoints: endpoints, state_dir, admin_listen, channels })
    }
}

fn check_channel(index: usize, raw: RawChannel) -> Result<ChannelConfig, ConfigError> {
    let key = |name: &str| format!("channels[{index}].{name}");
    let channel_id = raw.channel_id.ok_or_else(|| invalid(key("channel_id"), "missing"))?;
    check_channel_id(&key("channel_id"), &channel_id)?;
    let url = raw.url.ok_or_else(|| invalid(key("url"), "missing"))?;
    let url = check_url(&key("url"), &url, &["http"])?;
    let batch_max = in_range(
        &key("batch_max"),
        raw.batch_max,
        DEFAULT_BATCH_MAX as u64,
        1,
        MAX_BATCH_ITEMS as u64,
    )?;
    let flush_interval_ms = in_range(
        &key("flush_interval_ms"),
        raw.flush_interval_ms,
        DEFAULT_FLUSH_INTERVAL_MS,
        0,
        MAX_FLUSH_INTERVAL_MS,
    )?;
    let (low, high) = REQUEST_TIMEOUT_MS_RANGE;
    let request_timeout_ms = in_range(
        &key("request_timeout_ms"),
        raw.request_timeout_ms,
        DEFAULT_REQUEST_TIMEOUT_MS,
        low,
        high,
    )?;
    let (low, high) = MAX_BACKOFF_MS_RANGE;
    let max_backoff_ms =
        in_range(&key("max_backoff_ms"), raw.max_backoff_ms, DEFAULT_MAX_BACKOFF_MS, low, high)?;
    Ok(ChannelConfig {
        channel_id,
        url,
        batch_max: usize::try_from(batch_max).expect("at most MAX_BATCH_ITEMS"),
        flush_interval: Duration::from_millis(flush_interval_ms),
        request_timeout: Duration::from_millis(request_timeout_ms),
        max_backoff: Duration::from_millis(max_backoff_ms),
    })
}

/// Channel ids name files: letters, digits, `.`, `_`, `-`, not starting with `.`.
fn check_channel_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let length = id.chars().count();
    if length == 0 || length > MAX_CHANNEL_ID_CHARS {
        return Err(invalid(
            key,
            format!("has {length} characters; give 1 to {MAX_CHANNEL_ID_CHARS}"),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.starts_with('.') || !id.chars().all(allowed) {
        return Err(invalid(
            key,
            format!("{id:?}: use letters, digits, '.', '_' and '-' (not first '.')"),
        ));
    }
    Ok(())
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<hyper::Uri, ConfigError> {
    if url.len() > MAX_URL_CHARS {
        return Err(invalid(key, format!("is over {MAX_URL_CHARS} characters")));
    }
    let parsed: hyper::Uri =
        url.parse().map_err(|_| invalid(key, format!("{url:?} is not a URL")))?;
    let scheme = parsed.scheme_str().unwrap_or_default();
    if !schemes.contains(&scheme) || parsed.host().is_none() {
        return Err(invalid(
            key,
            format!("{url:?}: give {}://HOST[:PORT]/...", schemes.join(" or ")),
        ));
    }
    Ok(parsed)
}

fn in_range(
    key: &str,
    value: Option<i64>,
    default: u64,
    low: u64,
    high: u64,
) -> Result<u64, ConfigError> {
    let Some(value) = value else { return Ok(default) };
    match u64::try_from(value) {
        Ok(value) if (low..=high).contains(&value) => Ok(value),
        _ => Err(invalid(key, format!("{value} is out of range; give {low} to {high}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        atp_endpoints = ["http://127.0.0.1:50051"]
        state_dir = "/tmp/atp-publish"
        [[channels]]
        channel_id = "web"
        url = "http://127.0.0.1:9000/figures"
    "#;

    fn error(text: &str) -> String {
        let error = Config::parse(text).expect_err("a bad config");
        match &error {
            ConfigError::Parse { source, .. } => format!("{error}: {source}"),
            _ => error.to_string(),
        }
    }

    #[test]
    fn defaults_apply() {
        let config = Config::parse(GOOD).expect("a good config");
        assert_eq!(config.admin_listen, "127.0.0.1:7080".parse().expect("an address"));
        let channel = &config.channels[0];
        assert_eq!(channel.batch_max, 500);
        assert_eq!(channel.flush_interval, Duration::from_millis(50));
        assert_eq!(channel.request_timeout, Duration::from_millis(5000));
        assert_eq!(channel.max_backoff, Duration::from_millis(5000));
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let with = |line: &str| format!("{GOOD}{line}\n");
        assert!(error(&with("batch_max = 0")).starts_with("channels[0].batch_max:"));
        assert!(error(&with("batch_max = 10001")).starts_with("channels[0].batch_max:"));
        assert!(
            error(&with("request_timeout_ms = -1")).starts_with("channels[0].request_timeout_ms:")
        );
        assert!(error(&with("max_backoff_ms = 0")).starts_with("channels[0].max_backoff_ms:"));
        assert!(error(&with("colour = 1")).contains("colour"));
        let https = GOOD.replace("http://127.0.0.1:9000", "https://x");
        assert!(error(&https).starts_with("channels[0].url:"));
        let bad_id = GOOD.replace("\"web\"", "\"../web\"");
        assert!(error(&bad_id).starts_with("channels[0].channel_id:"));
        let no_endpoints = GOOD.replace("[\"http://127.0.0.1:50051\"]", "[]");
        assert!(error(&no_endpoints).starts_with("atp_endpoints:"));
        let admin = format!("admin_listen = \"nowhere\"\n{GOOD}");
        assert!(error(&admin).starts_with("admin_listen:"));
        let twice = format!("{GOOD}[[channels]]\nchannel_id = \"web\"\nurl = \"http://a/\"\n");
        assert!(error(&twice).starts_with("channels[1].channel_id:"));
        assert!(error("state_dir = \"/x\"\n").starts_with("atp_endpoints:"));
    }
}
