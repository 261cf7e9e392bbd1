//! The only module that calls the proxy-wasm host. Every call returns its status instead of
//! panicking (the SDK's `Context` helpers unwrap), and the rest of the filter sees plain Rust.

#[cfg(feature = "host-call-count")]
use std::cell::Cell;
use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

use canary_core::metrics::MetricIds;
use canary_core::store::{SetError, SharedStore};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// The kinds of host call the filter makes, for [`calls`].
#[derive(Debug, Clone, Copy)]
enum Call {
    Log,
    Configuration,
    Clock,
    GetHeader,
    SetHeader,
    AddHeader,
    Property,
    SendResponse,
    DefineMetric,
    IncrementMetric,
    RecordMetric,
    GetSharedData,
    SetSharedData,
}

// Read only by a counting build.
#[cfg_attr(not(feature = "host-call-count"), allow(dead_code))]
impl Call {
    const ALL: [Call; 13] = [
        Call::Log,
        Call::Configuration,
        Call::Clock,
        Call::GetHeader,
        Call::SetHeader,
        Call::AddHeader,
        Call::Property,
        Call::SendResponse,
        Call::DefineMetric,
        Call::IncrementMetric,
        Call::RecordMetric,
        Call::GetSharedData,
        Call::SetSharedData,
    ];

    fn name(self) -> &'static str {
        match self {
            Call::Log => "log",
            Call::Configuration => "get_configuration",
            Call::Clock => "get_current_time",
            Call::GetHeader => "get_header",
            Call::SetHeader => "set_header",
            Call::AddHeader => "add_header",
            Call::Property => "get_property",
            Call::SendResponse => "send_local_response",
            Call::DefineMetric => "define_metric",
            Call::IncrementMetric => "increment_metric",
            Call::RecordMetric => "record_metric",
            Call::GetSharedData => "get_shared_data",
            Call::SetSharedData => "set_shared_data",
        }
    }
}

#[cfg(feature = "host-call-count")]
thread_local! {
    /// Host calls this VM made, by kind (index in [`Call::ALL`]).
    static CALLS: [Cell<u64>; Call::ALL.len()] = const { [const { Cell::new(0) }; Call::ALL.len()] };
}

/// Counts one host call of `kind`; nothing at all in a shipped build.
#[inline(always)]
fn count(kind: Call) {
    #[cfg(feature = "host-call-count")]
    CALLS.with(|c| {
        if let Some(n) = c.get(kind as usize) {
            n.set(n.get() + 1);
        }
    });
    #[cfg(not(feature = "host-call-count"))]
    let _ = kind;
}

/// The response header that carries [`calls`] in a counting build.
#[cfg(feature = "host-call-count")]
pub const CALLS_HEADER: &str = "x-canary-host-calls";

/// This VM's host calls so far, as `kind=count` pairs joined by commas, for `make bench`
/// (bench/src/bin/instructions.rs reads two of them and divides the difference by the requests
/// between). Written with an uncounted call, so reporting does not count itself.
#[cfg(feature = "host-call-count")]
pub fn report_calls() {
    let value = CALLS.with(|c| {
        Call::ALL.iter().zip(c.iter()).map(|(k, n)| format!("{}={}", k.name(), n.get())).collect::<Vec<_>>().join(",")
    });
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, CALLS_HEADER, &value);
}

pub fn log(level: LogLevel, message: &str) {
    count(Call::Log);
    // Nothing useful to do if logging itself fails.
    let _ = hostcalls::log(level, message);
}

pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    count(Call::Configuration);
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

/// Host wall-clock time since the Unix epoch (Envoy's time source).
pub fn now() -> Duration {
    count(Call::Clock);
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

/// A request header's value as the client sent it. Always bytes: the SDK's `get_map_value`
/// unwraps `String::from_utf8` and traps the VM on a value that is not UTF-8, which any client
/// can send. The logic decides what bytes mean (see `canary_core::split::header_text`).
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    count(Call::GetHeader);
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// The request headers, as the split reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders;

impl canary_core::split::RequestHeaders for RequestHeaders {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        request_header(name)
    }
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    count(Call::SetHeader);
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
}

/// A response header's value (bytes, for the same reason as [`request_header`]).
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    count(Call::GetHeader);
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
}

/// A response trailer's value.
pub fn response_trailer(name: &str) -> Option<Vec<u8>> {
    count(Call::GetHeader);
    hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, name).ok().flatten()
}

pub fn add_response_header(name: &str, value: &str) -> Result<(), Status> {
    count(Call::AddHeader);
    hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value)
}

/// A stream property as bytes (`xds.cluster_name`, ...).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    count(Call::Property);
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A numeric stream property (Envoy encodes integers as 8 little-endian bytes).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
    count(Call::SendResponse);
    hostcalls::send_http_response(status, headers.to_vec(), Some(body))
}

thread_local! {
    /// This VM's metric ids (one VM per thread): see [`MetricIds`] for why each is defined once.
    static METRIC_IDS: RefCell<MetricIds> = RefCell::new(MetricIds::default());
}

/// The id of metric `name`, defined on the host the first time this VM asks for it.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let define = || {
        count(Call::DefineMetric);
        match hostcalls::define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(s) => {
                warn(&format!("canary-gate: cannot define metric {name}: {s:?}"));
                None
            }
        }
    };
    METRIC_IDS.with(|ids| match ids.try_borrow_mut() {
        Ok(mut ids) => ids.get_or_define(name, define),
        // Not reachable (nothing here re-enters); defining again is merely wasteful.
        Err(_) => define(),
    })
}

pub fn increment_metric(id: Option<u32>, by: i64) {
    if let Some(id) = id {
        count(Call::IncrementMetric);
        let _ = hostcalls::increment_metric(id, by);
    }
}

pub fn record_metric(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        count(Call::RecordMetric);
        let _ = hostcalls::record_metric(id, value);
    }
}

/// The VM-wide shared data of this filter's `vm_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), u32> {
        count(Call::GetSharedData);
        match hostcalls::get_shared_data(key) {
            Ok(v) => Ok(v),
            Err(Status::NotFound) => Ok((None, None)),
            Err(s) => Err(s as u32),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        count(Call::SetSharedData);
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(s) => Err(SetError::Host(s as u32)),
        }
    }
}
