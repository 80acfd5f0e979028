//! The command-line tools besides `run`: `tokensync status`, the kubectl plugin name and the
//! namespace a command works in.

pub mod status;

/// The name a kubectl plugin is installed under: `kubectl tokensync ...` runs it.
pub const PLUGIN_NAME: &str = "kubectl-tokensync";

/// The name help and usage show: `kubectl tokensync` when the binary runs as the kubectl plugin
/// (installed as `kubectl-tokensync`), else `tokensync`.
pub fn bin_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let file = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|f| f.to_str())
        .unwrap_or("");
    // kubectl finds plugins by name on PATH; `kubectl-tokensync.exe` on Windows
    if file == PLUGIN_NAME || file.strip_suffix(".exe") == Some(PLUGIN_NAME) {
        "kubectl tokensync"
    } else {
        "tokensync"
    }
}

/// The namespace a command works in: `-n` when given, else the kubeconfig context's namespace
/// (in a pod, the pod's namespace), else `default`, as kubectl does.
pub fn namespace(flag: Option<String>, client: &kube::Client) -> String {
    flag.unwrap_or_else(|| client.default_namespace().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_plugin_name_shows_as_kubectl_tokensync() {
        assert_eq!(
            bin_name(Some(OsStr::new("/usr/local/bin/kubectl-tokensync"))),
            "kubectl tokensync"
        );
        assert_eq!(
            bin_name(Some(OsStr::new("kubectl-tokensync.exe"))),
            "kubectl tokensync"
        );
        assert_eq!(bin_name(Some(OsStr::new("/bin/tokensync"))), "tokensync");
        assert_eq!(bin_name(None), "tokensync");
    }
}
