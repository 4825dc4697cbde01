//! Unit tests of the manager's logic over the recording fake backend (backend/fake.rs): pool
//! claim and refill, recovery, teardown races, start retries, snapshots, pins and forks. No
//! root, no kernel work: each test has its own state directory under the temp dir.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Runtime;
use super::snapshots::{ForkRequest, ForkSettings, ForkSource, SnapshotKind, SnapshotRequest};
use crate::backend::Storage;
use crate::backend::fake::{Call, FakeBackend};
use crate::config::Config;
use crate::error::Error;
use crate::model::{CreateRequest, Limits, SandboxState};
use crate::state::SandboxRecord;

/// A state directory of its own for one test, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "coppice-manager-{name}-{}-{}",
            std::process::id(),
            crate::ids::random_alnum(6)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A runtime over `fake` on `dir`, with a one-layer `default` template.
async fn runtime(dir: &TestDir, fake: &Arc<FakeBackend>) -> Arc<Runtime> {
    let state = dir.0.join("state");
    let rootfs = state.join("templates/default/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let info = serde_json::json!({
        "name": "default", "source": "host", "layers": [rootfs], "size_bytes": 0,
        "created_at": "2026-01-01T00:00:00.000Z",
    });
    std::fs::write(
        state.join("templates/default/template.json"),
        info.to_string(),
    )
    .unwrap();
    let cfg = Config {
        state_dir: state,
        pool_size: 0,
        ..Config::default()
    };
    Runtime::for_tests(cfg, fake.clone()).await.unwrap()
}

fn fake(dir: &TestDir) -> Arc<FakeBackend> {
    Arc::new(FakeBackend::new(dir.0.join("fake")))
}

/// A running sandbox's row as a previous daemon left it.
fn record(id: &str, slot: u32, pooled: bool, limits: Limits) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        template: "default".into(),
        state: SandboxState::Running,
        slot,
        pid: Some(4000 + slot as i32),
        pid_start: Some(1),
        created_at_ms: crate::clock::now_ms(),
        expires_at_ms: if pooled {
            i64::MAX
        } else {
            crate::clock::now_ms() + 60_000
        },
        limits,
        env: BTreeMap::new(),
        metadata: BTreeMap::new(),
        hostname: format!("sbx-{id}"),
        pooled,
    }
}

fn starts(calls: &[Call]) -> usize {
    calls.iter().filter(|c| matches!(c, Call::Start(_))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_keeps_live_and_pooled_sandboxes_and_cleans_up_dead_ones() {
    let dir = TestDir::new("recover");
    let fake = fake(&dir);
    let defaults = Config::default().default_limits;
    {
        let rt = runtime(&dir, &fake).await;
        for (id, slot, pooled) in [("live", 1, false), ("pooled", 2, true), ("dead", 3, false)] {
            rt.store
                .insert(&record(id, slot, pooled, defaults.clone()))
                .unwrap();
        }
    }
    // The daemon restarts; meanwhile one sandbox's init died.
    fake.kill_behind_the_back("dead");
    fake.clear_calls();
    let rt = runtime(&dir, &fake).await;
    let calls = fake.calls();
    assert!(calls.contains(&Call::Destroy("dead".into())), "{calls:?}");
    assert!(!calls.contains(&Call::Destroy("live".into())), "{calls:?}");
    assert!(
        calls.contains(&Call::Sweep(vec!["live".into(), "pooled".into()])),
        "sweep keeps exactly the survivors: {calls:?}"
    );
    assert!(rt.store.get("dead").unwrap().is_none());
    assert!(rt.store.get("live").unwrap().is_some());
    assert_eq!(
        rt.pool_pop("default").as_deref(),
        Some("pooled"),
        "back in its pool"
    );
    assert!(rt.pool_pop("default").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_is_handed_out_with_the_callers_limits() {
    let dir = TestDir::new("claim");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    let defaults = rt.cfg.default_limits.clone();
    rt.store
        .insert(&record("warm", 1, true, defaults.clone()))
        .unwrap();
    rt.pool_push("default", "warm".into());
    fake.clear_calls();
    let bigger = Limits {
        memory_bytes: defaults.memory_bytes.map(|m| m * 2),
        ..Default::default()
    };
    let info = rt
        .create(CreateRequest {
            limits: bigger,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.id, "warm", "the pooled sandbox, not a new one");
    let calls = fake.calls();
    assert_eq!(starts(&calls), 0, "{calls:?}");
    assert!(
        calls.iter().any(|c| matches!(c, Call::SetLimits(id, l)
            if id == "warm" && l.memory_bytes == defaults.memory_bytes.map(|m| m * 2))),
        "{calls:?}"
    );
    assert!(!rt.store.get("warm").unwrap().unwrap().pooled);
    assert!(rt.pool_pop("default").is_none(), "taken out of the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pooled_sandbox_is_torn_down_and_a_fresh_one_started() {
    let dir = TestDir::new("deadpool");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    rt.store
        .insert(&record("stale", 1, true, rt.cfg.default_limits.clone()))
        .unwrap();
    rt.pool_push("default", "stale".into());
    fake.kill_behind_the_back("stale");
    fake.clear_calls();
    let info = rt.create(CreateRequest::default()).await.unwrap();
    assert_ne!(info.id, "stale");
    let calls = fake.calls();
    assert!(calls.contains(&Call::Destroy("stale".into())), "{calls:?}");
    assert!(calls.contains(&Call::Start(info.id.clone())), "{calls:?}");
    assert!(rt.store.get("stale").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_is_retried_once_with_a_fresh_id_and_then_reported() {
    let dir = TestDir::new("retry");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    fake.clear_calls();
    fake.fail_next_start(Error::Internal("veth vanished".into()));
    let info = rt.create(CreateRequest::default()).await.unwrap();
    let calls = fake.calls();
    let ids: Vec<&String> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Start(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2, "{calls:?}");
    assert_ne!(ids[0], ids[1], "the retry has a fresh id");
    assert_eq!(ids[1], &info.id);
    assert!(
        rt.store.get(ids[0]).unwrap().is_none(),
        "the failed attempt left no row"
    );
    assert_eq!(rt.list().unwrap().len(), 1);

    // Two failures in a row: the caller hears the second, and nothing is left behind.
    fake.fail_next_start(Error::Internal("one".into()));
    fake.fail_next_start(Error::Internal("two".into()));
    let e = rt.create(CreateRequest::default()).await.unwrap_err();
    assert!(e.to_string().contains("two"), "{e}");
    assert_eq!(rt.list().unwrap().len(), 1);
    // A refusal that retrying cannot fix is not retried.
    fake.clear_calls();
    fake.fail_next_start(Error::InvalidArgument("bad template".into()));
    assert!(rt.create(CreateRequest::default()).await.is_err());
    assert_eq!(starts(&fake.calls()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_kills_tear_a_sandbox_down_once_and_leave_a_tombstone() {
    let dir = TestDir::new("kill");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    let id = rt.create(CreateRequest::default()).await.unwrap().id;
    fake.clear_calls();
    let (a, b, c) = tokio::join!(
        rt.kill(&id),
        rt.kill(&id),
        rt.teardown(rt.store.get(&id).unwrap().unwrap(), "reaped", "timeout")
    );
    // Each caller either tore it down, waited for the one who did, or found it gone.
    for r in [&a, &b, &c] {
        assert!(
            matches!(r, Ok(()) | Err(Error::SandboxEnded { .. })),
            "{a:?} {b:?} {c:?}"
        );
    }
    let destroys = fake
        .calls()
        .iter()
        .filter(|c| **c == Call::Destroy(id.clone()))
        .count();
    assert_eq!(destroys, 1, "{:?}", fake.calls());
    match rt.info(&id) {
        Err(Error::SandboxEnded { id: gone, .. }) => assert_eq!(gone, id),
        other => panic!("expected a tombstone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_freezes_takes_the_layer_and_always_thaws() {
    let dir = TestDir::new("snapshot");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    let id = rt.create(CreateRequest::default()).await.unwrap().id;
    fake.clear_calls();
    let snap = rt
        .snapshot(
            &id,
            SnapshotRequest {
                name: Some("prepared".into()),
                metadata: BTreeMap::new(),
                kind: SnapshotKind::Filesystem,
            },
        )
        .await
        .unwrap();
    let calls = fake.calls();
    let pos = |c: &Call| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c:?} in {calls:?}"))
    };
    let (f, s, t) = (
        pos(&Call::Freeze(id.clone())),
        pos(&Call::SnapshotUpper(id.clone(), snap.snapshot_id.clone())),
        pos(&Call::Thaw(id.clone())),
    );
    assert!(f < s && s < t, "freeze, take, thaw: {calls:?}");
    assert!(!fake.is_frozen(&id));
    // A memory snapshot is refused by a backend without them, and nothing is frozen for it.
    fake.clear_calls();
    let e = rt
        .snapshot(
            &id,
            SnapshotRequest {
                name: None,
                metadata: BTreeMap::new(),
                kind: SnapshotKind::Memory,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("memory snapshots"), "{e}");
    assert!(fake.calls().iter().all(|c| !matches!(c, Call::Freeze(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_fan_out_reports_each_fork_and_pins_its_snapshot() {
    let dir = TestDir::new("fork");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    let src = rt.create(CreateRequest::default()).await.unwrap().id;
    let snap = rt
        .snapshot(
            &src,
            SnapshotRequest {
                name: Some("base".into()),
                metadata: BTreeMap::new(),
                kind: SnapshotKind::Filesystem,
            },
        )
        .await
        .unwrap();
    // Two of five forks fail for good (a refusal a retry cannot fix); the rest stand.
    fake.fail_next_start(Error::InvalidArgument("no slot".into()));
    fake.fail_next_start(Error::InvalidArgument("no slot".into()));
    let res = rt
        .fork(ForkRequest {
            source: ForkSource::Snapshot(snap.snapshot_id.clone()),
            count: 5,
            common: ForkSettings::default(),
            per_fork: vec![],
        })
        .await
        .unwrap();
    assert_eq!((res.created, res.failed), (3, 2), "{res:?}");
    assert_eq!(res.forks.len(), 5);
    let failed: Vec<_> = res.forks.iter().filter(|f| f.sandbox.is_none()).collect();
    assert!(
        failed
            .iter()
            .all(|f| f.error.as_deref().is_some_and(|e| e.contains("no slot"))),
        "{failed:?}"
    );
    // Forks stand on the snapshot: it cannot be deleted, and the collector keeps its layer.
    let e = rt.delete_snapshot(&snap.snapshot_id).unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    fake.clear_calls();
    rt.collect_snapshots(true);
    let kept = fake.calls().into_iter().find_map(|c| match c {
        Call::KeptLayers(k) => Some(k),
        _ => None,
    });
    assert_eq!(kept, Some(vec![snap.snapshot_id.clone()]));
    // Once the forks are gone it can be deleted, and its layer goes with it.
    for f in res.forks.iter().filter_map(|f| f.sandbox.as_ref()) {
        rt.kill(&f.id).await.unwrap();
    }
    fake.clear_calls();
    rt.delete_snapshot(&snap.snapshot_id).unwrap();
    assert!(
        fake.calls()
            .contains(&Call::RemoveLayer(snap.snapshot_id.clone()))
    );
}

/// A filesystem snapshot of `id` named `name`.
async fn snapshot_of(rt: &Runtime, id: &str, name: &str) -> String {
    rt.snapshot(
        id,
        SnapshotRequest {
            name: Some(name.into()),
            metadata: BTreeMap::new(),
            kind: SnapshotKind::Filesystem,
        },
    )
    .await
    .unwrap()
    .snapshot_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_restarts_a_sandbox_on_its_snapshot_and_refuses_a_strangers() {
    let dir = TestDir::new("restore");
    let fake = fake(&dir);
    let rt = runtime(&dir, &fake).await;
    let id = rt.create(CreateRequest::default()).await.unwrap().id;
    let other = rt.create(CreateRequest::default()).await.unwrap().id;
    let snap = snapshot_of(&rt, &id, "before").await;
    let foreign = snapshot_of(&rt, &other, "theirs").await;
    let pid_before = rt.record(&id).unwrap().pid;

    fake.clear_calls();
    let info = rt.restore(&id, &snap).await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    let calls = fake.calls();
    let stop = calls
        .iter()
        .position(|c| *c == Call::StopForRestart(id.clone()));
    let start = calls.iter().position(|c| *c == Call::Start(id.clone()));
    assert!(
        stop.is_some() && stop < start,
        "stop, then start: {calls:?}"
    );
    // The new processes stand on the snapshot's layer, over the template's.
    let layers = fake.started_on(&id);
    assert_eq!(layers.first(), Some(&fake.layer_path(&snap)), "{layers:?}");
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert_ne!(rt.record(&id).unwrap().pid, pid_before);
    // The restored sandbox now stands on the snapshot: deleting it is refused.
    assert!(matches!(
        rt.delete_snapshot(&snap),
        Err(Error::FailedPrecondition(_))
    ));

    // Another sandbox's snapshot is refused before anything is stopped.
    fake.clear_calls();
    let e = rt.restore(&id, &foreign).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    // A restart that fails leaves no half-restored sandbox: it is torn down and says so.
    fake.fail_next_start(Error::Internal("no memory".into()));
    let e = rt.restore(&id, &snap).await.unwrap_err();
    assert!(e.to_string().contains("is gone"), "{e}");
    assert!(fake.calls().contains(&Call::Destroy(id.clone())));
    assert!(matches!(rt.info(&id), Err(Error::SandboxEnded { .. })));
}
