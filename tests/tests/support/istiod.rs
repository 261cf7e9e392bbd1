//! istiod's part in the controller's real-Envoy tests: follow one WasmPlugin on the real
//! kube-apiserver and hand every version to the caller, who writes its `pluginConfig` to the
//! Envoys' watched files. Shared by `controller_e2e.rs` and `waypoint_e2e.rs`.

use std::time::Duration;

use futures_util::StreamExt;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};

/// Calls `push` with every version of WasmPlugin `plugin`, in the order the API server's watch
/// reports them: a read, then a watch from its version; both again whenever the watch ends or
/// fails. Never returns; the test drops the task.
pub async fn follow_wasmplugin(plugins: &Api<WasmPlugin>, plugin: &str, mut push: impl FnMut(WasmPlugin)) {
    loop {
        let version = match plugins.get_opt(plugin).await {
            Ok(Some(p)) => {
                let version = p.metadata.resource_version.clone().unwrap_or_default();
                push(p);
                version
            }
            Ok(None) => "0".to_owned(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let wp = WatchParams::default().fields(&format!("metadata.name={plugin}")).timeout(60);
        let Ok(events) = plugins.watch(&wp, &version).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => push(p),
                Ok(WatchEvent::Error(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
