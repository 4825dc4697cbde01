//! What every service of the agent shares about the sandbox: the environment every process
//! gets, the default user and the access token. A leaf: services take an `Arc<Env>`, and only
//! `main.rs` knows them all.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub struct Env {
    /// Env vars every process gets (create-time `envVars`), below per-call envs.
    pub vars: RwLock<BTreeMap<String, String>>,
    pub default_user: String,
    /// When set, every route but /health and /files requires `X-Access-Token`.
    /// Shared, not copied, by the auth guard on every request.
    pub access_token: RwLock<Option<Arc<str>>>,
}

impl Env {
    pub fn new(default_user: String) -> Arc<Self> {
        Arc::new(Self {
            vars: RwLock::new(BTreeMap::new()),
            default_user,
            access_token: RwLock::new(None),
        })
    }

    pub fn env_snapshot(&self) -> BTreeMap<String, String> {
        self.vars.read().expect("env lock").clone()
    }
}
