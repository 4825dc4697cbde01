//! Who may reach a sandbox's own ports through the traffic proxy, and the Host header its
//! servers see (E2B's `allowPublicTraffic: false` and `maskRequestHost`). A sandbox without a
//! row is public and sees the caller's Host. Rows go with the sandbox (`forget_lifecycle`).

use rusqlite::{OptionalExtension, params};

use super::StateStore;
use crate::error::Result;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandbox_ingress (
    id TEXT PRIMARY KEY,
    traffic_token TEXT,
    mask_request_host TEXT
);
";

/// A sandbox's ingress settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingress {
    /// Requests to its ports must carry this token; None: its ports are public.
    pub traffic_token: Option<String>,
    /// The Host header its servers see, `${PORT}` standing for the port; None: the caller's.
    pub mask_request_host: Option<String>,
}

impl Ingress {
    /// The Host header a request to `port` carries in, when the host is masked.
    pub fn host_for(&self, port: u16) -> Option<String> {
        self.mask_request_host
            .as_deref()
            .map(|mask| mask.replace("${PORT}", &port.to_string()))
    }
}

impl StateStore {
    /// Stores a sandbox's ingress settings (replacing any).
    pub fn set_ingress(&self, id: &str, ingress: &Ingress) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sandbox_ingress (id, traffic_token, mask_request_host) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET traffic_token = excluded.traffic_token,
                 mask_request_host = excluded.mask_request_host",
            params![id, ingress.traffic_token, ingress.mask_request_host],
        )?;
        Ok(())
    }

    /// A sandbox's ingress settings (the default, public, when none were stored).
    pub fn ingress(&self, id: &str) -> Result<Ingress> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT traffic_token, mask_request_host FROM sandbox_ingress WHERE id = ?1",
            )?
            .query_row(params![id], |r| {
                Ok(Ingress {
                    traffic_token: r.get(0)?,
                    mask_request_host: r.get(1)?,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    pub(super) fn forget_ingress(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sandbox_ingress WHERE id = ?1", params![id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_names_the_port() {
        let i = Ingress {
            traffic_token: None,
            mask_request_host: Some("localhost:${PORT}".into()),
        };
        assert_eq!(i.host_for(8080).as_deref(), Some("localhost:8080"));
        assert_eq!(Ingress::default().host_for(8080), None);
    }
}
