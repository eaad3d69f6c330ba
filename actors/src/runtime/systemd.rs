//! systemd notification protocol (`sd_notify`): a datagram to `$NOTIFY_SOCKET`. Without the
//! variable (a terminal, a test) every call is a no-op, so the daemon runs the same anywhere.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { socket: None };
        };
        let path = path.to_string_lossy().into_owned();
        let addr = if let Some(abstract_name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path)
        };
        let socket = match (UnixDatagram::unbound(), addr) {
            (Ok(s), Ok(a)) => Some((s, a)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is set but unusable");
                None
            }
        };
        Notifier { socket }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(state, error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// Half of `WATCHDOG_USEC` when systemd asked for pings (for this process).
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path)?;
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path)?;
        let n = Notifier {
            socket: Some((UnixDatagram::unbound()?, addr)),
        };
        n.ready("serving");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf)?;
        let first = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(first.starts_with("READY=1\nSTATUS=serving"), "{first}");
        let len = server.recv(&mut buf)?;
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        Ok(())
    }

    #[test]
    fn without_socket_it_is_silent() {
        let n = Notifier { socket: None };
        assert!(!n.enabled());
        n.ready("x");
    }
}
