//! Lineage: which snapshot each sandbox and snapshot stands on, as a tree.

use super::*;

impl Runtime {
    fn lineage_node(&self, id: &str) -> Result<Option<LineageNode>> {
        if let Some(s) = self.store.get_snapshot(id)? {
            return Ok(Some(LineageNode {
                id: s.id.clone(),
                kind: "snapshot".into(),
                parent: Some(s.sandbox_id.clone()),
                alive: s.ready,
                template: s.template,
            }));
        }
        let live = self.store.get(id)?.filter(|r| !r.pooled);
        match (self.store.get_lineage(id)?, live) {
            (Some(l), live) => Ok(Some(LineageNode {
                id: l.sandbox_id,
                kind: "sandbox".into(),
                parent: l.parent_snapshot,
                alive: live.is_some(),
                template: l.template,
            })),
            (None, Some(r)) => Ok(Some(LineageNode {
                id: r.id,
                kind: "sandbox".into(),
                parent: None,
                alive: true,
                template: r.template,
            })),
            (None, None) => Ok(None),
        }
    }

    /// Ancestors and descendants of a sandbox or snapshot (dead sandboxes included).
    pub fn lineage(&self, id: &str) -> Result<Lineage> {
        let node = self
            .lineage_node(id)?
            .ok_or_else(|| Error::SandboxNotFound(id.to_string()))?;
        let mut ancestors = Vec::new();
        let mut next = node.parent.clone();
        while let Some(p) = next {
            let Some(n) = self.lineage_node(&p)? else {
                break;
            };
            next = n.parent.clone();
            ancestors.push(n);
            if ancestors.len() > 4 * MAX_LAYERS {
                break;
            }
        }
        let mut descendants = Vec::new();
        let mut queue = std::collections::VecDeque::from([node.clone()]);
        while let Some(n) = queue.pop_front() {
            let children = if n.kind == "snapshot" {
                self.store.forks_of(&n.id)?
            } else {
                self.store.snapshots_of(&n.id)?
            };
            for c in children {
                if let Some(child) = self.lineage_node(&c)? {
                    descendants.push(child.clone());
                    queue.push_back(child);
                }
            }
            if descendants.len() > 10_000 {
                break;
            }
        }
        Ok(Lineage {
            node,
            ancestors,
            descendants,
        })
    }
}
