//! The pool's instances as Docker containers: what [`crate::pool::Driver`] asks, done with the
//! engine. The pool's own logic (dispatch, scaling, queueing, pausing, retiring) knows nothing of
//! Docker, so its tests drive it with a fake.

use std::sync::Arc;

use amphi_contract::function::{ContainerProtocol, FunctionVersion};
use tokio::sync::OnceCell;

use crate::image;
use crate::instance::{Instance, InstanceHost, Launch, StartError};
use crate::pool::Driver;

/// The image label that says how the image speaks the contract when the config does not.
pub const PROTOCOL_LABEL: &str = "amphi.protocol";

/// The unprivileged user (and group) of most distributions.
const NOBODY: &str = "65534:65534";

/// Runs one function version's instances as containers.
pub struct ContainerDriver {
    host: Arc<InstanceHost>,
    function: Arc<FunctionVersion>,
    launch: OnceCell<Launch>,
}

impl ContainerDriver {
    /// A driver for `function`'s instances.
    pub fn new(host: Arc<InstanceHost>, function: Arc<FunctionVersion>) -> Self {
        Self { host, function, launch: OnceCell::new() }
    }

    /// What instances run: the configured command and protocol, else the image's entrypoint and
    /// command and its `amphi.protocol` label. Read from the image once per version.
    async fn launch(&self) -> Result<&Launch, StartError> {
        self.launch
            .get_or_try_init(|| async {
                let config = &self.function.config.container;
                if let Some(registry) = &self.host.registry {
                    // Built on another node: pulled on this node's first cold start.
                    image::fetch(&self.host.engine, registry, &self.function.digest).await.map_err(|e| {
                        StartError::Failed(format!(
                            "the function's image is not on this node and could not be pulled: {e}"
                        ))
                    })?;
                }
                let image = image::inspect(&self.host.engine, &self.function.digest).await?;
                let command = config.command.clone().unwrap_or(image.command);
                if command.is_empty() {
                    return Err(StartError::Failed(
                        "the image has no entrypoint or command; set container.command".into(),
                    ));
                }
                let labelled = image.labels.get(PROTOCOL_LABEL).map(String::as_str);
                let protocol = match (config.protocol, labelled) {
                    (Some(protocol), _) => protocol,
                    (None, Some(label)) => ContainerProtocol::parse(label).ok_or_else(|| {
                        StartError::Failed(format!(
                            "the image's {PROTOCOL_LABEL} label is `{label}`, not http or cgi"
                        ))
                    })?,
                    (None, None) => ContainerProtocol::Http,
                };
                let user = match &config.user {
                    Some(user) => user.clone(),
                    None => default_user(&image.user),
                };
                Ok(Launch { command, protocol, user })
            })
            .await
    }
}

impl Driver for ContainerDriver {
    type Instance = Instance;

    async fn start(&self) -> Result<Arc<Instance>, StartError> {
        let launch = self.launch().await?;
        Instance::start(&self.host, &self.function, launch).await
    }

    async fn pause(&self, instance: &Instance) -> Result<(), StartError> {
        Ok(instance.pause(&self.host.engine).await?)
    }

    async fn unpause(&self, instance: &Instance) -> Result<(), StartError> {
        Ok(instance.unpause(&self.host.engine).await?)
    }

    async fn remove(&self, instance: &Instance) {
        instance.remove(&self.host).await;
    }

    fn is_gone(&self, instance: &Instance) -> bool {
        instance.is_gone()
    }

    fn id(instance: &Instance) -> &str {
        &instance.id
    }
}

/// The user an instance runs as when the function does not name one: the image's own, unless
/// that is root (named or by default), which becomes nobody. A process that escaped the shim's
/// supervision as root would own whatever the image left writable.
fn default_user(image_user: &str) -> String {
    let name = image_user.split(':').next().unwrap_or("");
    if name.is_empty() || name == "root" || name == "0" { NOBODY.to_string() } else { image_user.to_string() }
}

#[cfg(test)]
mod tests {
    use super::default_user;

    #[test]
    fn root_images_run_as_nobody_others_as_themselves() {
        for root in ["", "root", "0", "0:0", "root:root"] {
            assert_eq!(default_user(root), "65534:65534", "{root}");
        }
        assert_eq!(default_user("app"), "app");
        assert_eq!(default_user("1000:1000"), "1000:1000");
    }
}
