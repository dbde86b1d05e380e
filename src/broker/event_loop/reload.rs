//! SIGHUP: the configuration, log outputs and TLS files read again, and
//! the frontends given their share of the new configuration.

use super::Broker;
use crate::broker::apply_verbosity;
use crate::broker::audit::Auditor;
use crate::config::Config;
use crate::logging::{self, LogState};

impl Broker {
    /// SIGHUP: re-read the file; a broken one keeps the running configuration.
    pub(super) fn reload(&mut self) {
        let path = self.setup.config_path.clone();
        let loaded = match Config::load(&path, &self.setup.paths) {
            Err(crate::config::ConfigError::Read { source, .. })
                if self.setup.cli.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok((Config::defaults(&self.setup.paths), Vec::new()))
            }
            other => other,
        };
        let (mut new, warnings) = match loaded {
            Ok(c) => c,
            Err(e) => {
                log::error!("failed to reload configuration: {e}; keeping the previous one");
                return;
            }
        };
        for w in warnings {
            log::warn!("{w}");
        }
        apply_verbosity(&mut new, self.setup.cli.verbose);
        for key in self.setup.config.apply_reload(new) {
            log::warn!("configuration key '{key}' changed; the change takes effect when the daemon restarts");
        }
        self.reopen_logs();
        let c = &self.setup.config;
        self.setup.auditor = Auditor::new(&c.syslog_socket, c.audit_level, c.audit_logging);
        let _ = self.reload_tls();
        log::info!("configuration reloaded from {}", path.display());
        self.push_config();
    }

    /// Re-reads the TLS files; broken ones leave the current ones in use.
    /// Returns whether the new files are in use.
    pub(super) fn reload_tls(&mut self) -> Result<(), String> {
        if self.setup.tls.is_none() {
            return Ok(());
        }
        match crate::tls::files::TlsFiles::load(&self.setup.config) {
            Ok(files) => {
                self.setup.tls = Some(files);
                log::info!("TLS certificates, key, CA, CRL and allowed DNs reloaded");
                Ok(())
            }
            Err(e) => {
                log::error!("cannot reload TLS files: {e}; keeping the previous ones");
                Err(e.to_string())
            }
        }
    }

    /// Opens the log outputs the configuration names, replacing the current ones.
    pub(super) fn reopen_logs(&mut self) {
        let c = &self.setup.config;
        let (state, log_warnings) = LogState::open(&c.log, self.setup.cli.daemon, &c.syslog_socket);
        logging::install(state);
        for w in log_warnings {
            log::warn!("{w}");
        }
    }
}
