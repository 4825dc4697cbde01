//! The page's accessibility snapshot in playwright-mcp's YAML form, built from Chromium's own
//! accessibility tree (`Accessibility.getFullAXTree`: roles and accessible names as the
//! browser computes them, hidden nodes already left out):
//!
//! ```yaml
//! - heading "Hello" [level=1] [ref=e2]
//! - textbox "Name" [ref=e3]: typed text
//! - link "Docs" [ref=e4]:
//!   - /url: https://example.org/docs
//! ```
//!
//! Every element line carries a ref that actions take as `target`. A ref stays the same while
//! its element keeps its role and name (as playwright-mcp's do), and only the refs of the
//! latest snapshot resolve.

use std::collections::HashMap;

use serde_json::Value;

use super::protocol::AxNode;

/// Refs of one page: stable per element, resolvable for the latest snapshot's elements.
#[derive(Default)]
pub struct Refs {
    /// backend DOM node id → (role, name, ref).
    by_node: HashMap<i64, (String, String, String)>,
    /// ref → backend DOM node id, for the latest snapshot only.
    current: HashMap<String, i64>,
    last: u64,
}

impl Refs {
    fn assign(&mut self, node: i64, role: &str, name: &str) -> String {
        let reuse = self
            .by_node
            .get(&node)
            .filter(|(r, n, _)| r == role && n == name)
            .map(|(_, _, reference)| reference.clone());
        let reference = reuse.unwrap_or_else(|| {
            self.last += 1;
            let reference = format!("e{}", self.last);
            self.by_node
                .insert(node, (role.into(), name.into(), reference.clone()));
            reference
        });
        self.current.insert(reference.clone(), node);
        reference
    }

    /// The element a ref of the latest snapshot names.
    pub fn resolve(&self, reference: &str) -> Option<i64> {
        self.current.get(reference).copied()
    }
}

/// What to render.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Only the subtree of this element (backend DOM node id).
    pub root: Option<i64>,
    /// Levels below the root to render (None: all).
    pub depth: Option<usize>,
}

/// One rendered item before it is written out.
enum Item {
    Text(String),
    Element {
        role: String,
        name: String,
        attrs: Vec<String>,
        reference: Option<String>,
        value: Option<String>,
        url: Option<String>,
        children: Vec<Item>,
    },
}

/// Renders `nodes` (the full tree, root first) and makes their refs the current ones.
pub fn render(nodes: &[AxNode], refs: &mut Refs, scope: Scope) -> String {
    refs.current.clear();
    let by_id: HashMap<&str, &AxNode> = nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    let root = match scope.root {
        Some(backend) => nodes
            .iter()
            .find(|n| n.backend_dom_node_id == Some(backend)),
        None => nodes.first(),
    };
    let Some(root) = root else {
        return String::new();
    };
    let mut ctx = Build {
        by_id: &by_id,
        refs,
        max_depth: scope.depth,
    };
    let items = if role_of(root) == "RootWebArea" {
        ctx.children(root, 0)
    } else {
        ctx.node(root, 0)
    };
    let mut out = String::new();
    write_items(&items, 0, &mut out);
    out
}

struct Build<'a> {
    by_id: &'a HashMap<&'a str, &'a AxNode>,
    refs: &'a mut Refs,
    max_depth: Option<usize>,
}

impl Build<'_> {
    fn children(&mut self, node: &AxNode, depth: usize) -> Vec<Item> {
        let mut items = Vec::new();
        for id in &node.child_ids {
            if let Some(child) = self.by_id.get(id.as_str()) {
                items.extend(self.node(child, depth));
            }
        }
        merge_texts(items)
    }

    /// The items `node` renders as: none, its children hoisted, a text or one element.
    fn node(&mut self, node: &AxNode, depth: usize) -> Vec<Item> {
        let role = role_of(node);
        let name = string_of(node.name.as_ref().and_then(|v| v.value.as_ref()));
        if node.ignored {
            return self.children(node, depth);
        }
        match role {
            "InlineTextBox" | "ListMarker" | "LineBreak" => return Vec::new(),
            // A label's text is its control's name already.
            "LabelText" => return self.children(node, depth),
            "StaticText" => {
                return if name.trim().is_empty() {
                    Vec::new()
                } else {
                    vec![Item::Text(name)]
                };
            }
            // Wrappers without meaning of their own: their content stands in their place,
            // except a box of text alone, which is what a person would point at.
            "generic" | "none" | "presentation" | "MenuListPopup" | "RootWebArea"
                if name.is_empty() =>
            {
                let children = self.children(node, depth);
                let text_only = matches!(children.as_slice(), [Item::Text(_)]);
                if !(text_only && role == "generic") {
                    return children;
                }
            }
            _ => {}
        }
        if self.max_depth.is_some_and(|max| depth > max) {
            return Vec::new();
        }
        let reference = node
            .backend_dom_node_id
            .map(|backend| self.refs.assign(backend, role, &name));
        let property = |key: &str| {
            node.properties
                .iter()
                .find(|p| p.name == key)
                .and_then(|p| p.value.value.clone())
        };
        let attrs = attributes(&property);
        let editable = matches!(role, "textbox" | "searchbox" | "spinbutton" | "combobox");
        let value = node
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
            .map(|v| string_of(Some(v)))
            .filter(|v| !v.is_empty() && (editable || role == "slider"));
        let url = (role == "link")
            .then(|| property("url").map(|u| string_of(Some(&u))))
            .flatten()
            .filter(|u| !u.is_empty());
        // A text field's inner editor repeats its value; a select's popup holds its options.
        let mut children = if matches!(role, "textbox" | "searchbox" | "spinbutton") {
            Vec::new()
        } else {
            self.children(node, depth + 1)
        };
        // Text that only repeats the name is left out.
        if let [Item::Text(t)] = children.as_slice()
            && t.trim() == name.trim()
        {
            children.clear();
        }
        vec![Item::Element {
            role: role.to_string(),
            name,
            attrs,
            reference,
            value,
            url,
            children,
        }]
    }
}

fn role_of(node: &AxNode) -> &str {
    node.role
        .as_ref()
        .and_then(|r| r.value.as_ref())
        .and_then(Value::as_str)
        .unwrap_or("generic")
}

fn string_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// playwright-mcp's attributes, in its order.
fn attributes(property: &dyn Fn(&str) -> Option<Value>) -> Vec<String> {
    let truthy = |v: &Option<Value>| {
        matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "true")
    };
    let mut attrs = Vec::new();
    match property("checked") {
        Some(Value::String(s)) if s == "mixed" => attrs.push("checked=mixed".into()),
        v if truthy(&v) => attrs.push("checked".into()),
        _ => {}
    }
    if truthy(&property("disabled")) {
        attrs.push("disabled".into());
    }
    if truthy(&property("expanded")) {
        attrs.push("expanded".into());
    }
    if truthy(&property("focused")) {
        attrs.push("active".into());
    }
    if let Some(v) = property("invalid")
        && v.as_str().is_some_and(|s| s != "false")
    {
        attrs.push("invalid".into());
    }
    if let Some(level) = property("level").and_then(|v| v.as_i64()) {
        attrs.push(format!("level={level}"));
    }
    match property("pressed") {
        Some(Value::String(s)) if s == "mixed" => attrs.push("pressed=mixed".into()),
        v if truthy(&v) => attrs.push("pressed".into()),
        _ => {}
    }
    if truthy(&property("selected")) {
        attrs.push("selected".into());
    }
    attrs
}

/// Adjacent texts become one (a paragraph's runs of plain and bold text read as one line).
fn merge_texts(items: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        match (out.last_mut(), item) {
            (Some(Item::Text(prev)), Item::Text(t)) => {
                if !prev.ends_with(' ') && !t.starts_with(' ') {
                    prev.push(' ');
                }
                prev.push_str(&t);
            }
            (_, item) => out.push(item),
        }
    }
    for item in &mut out {
        if let Item::Text(t) = item {
            *t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        }
    }
    out
}

fn write_items(items: &[Item], indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    for item in items {
        match item {
            Item::Text(t) => {
                out.push_str(&format!("{pad}- text: {}\n", yaml_value(t)));
            }
            Item::Element {
                role,
                name,
                attrs,
                reference,
                value,
                url,
                children,
            } => {
                let mut line = format!("{pad}- {role}");
                if !name.is_empty() {
                    line.push(' ');
                    line.push_str(&serde_json::to_string(name).unwrap_or_default());
                }
                for a in attrs {
                    line.push_str(&format!(" [{a}]"));
                }
                if let Some(r) = reference {
                    line.push_str(&format!(" [ref={r}]"));
                }
                let inline = match (value, children.as_slice()) {
                    (Some(v), _) => Some(v.clone()),
                    (None, [Item::Text(t)]) if url.is_none() => Some(t.clone()),
                    _ => None,
                };
                if let Some(text) = inline {
                    line.push_str(&format!(": {}", yaml_value(&text)));
                    out.push_str(&line);
                    out.push('\n');
                    if let Some(u) = url {
                        out.push_str(&format!("{pad}  - /url: {}\n", yaml_value(u)));
                    }
                    continue;
                }
                if url.is_some() || !children.is_empty() {
                    line.push(':');
                }
                out.push_str(&line);
                out.push('\n');
                if let Some(u) = url {
                    out.push_str(&format!("{pad}  - /url: {}\n", yaml_value(u)));
                }
                write_items(children, indent + 1, out);
            }
        }
    }
}

/// A YAML scalar: plain when that reads back as the same string, else double-quoted.
fn yaml_value(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c))
        && !matches!(s, "true" | "false" | "null" | "yes" | "no" | "~")
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: &str, name: &str, children: &[&str], backend: i64) -> AxNode {
        serde_json::from_value(serde_json::json!({
            "nodeId": id,
            "role": {"value": role},
            "name": {"value": name},
            "childIds": children,
            "backendDOMNodeId": backend,
        }))
        .unwrap()
    }

    fn tree() -> Vec<AxNode> {
        let mut heading = node("2", "heading", "Hello", &["3"], 12);
        heading.properties =
            serde_json::from_value(serde_json::json!([{"name": "level", "value": {"value": 1}}]))
                .unwrap();
        let mut textbox = node("5", "textbox", "Name", &["6"], 15);
        textbox.value = serde_json::from_value(serde_json::json!({"value": "v"})).unwrap();
        vec![
            node("1", "RootWebArea", "T", &["9"], 1),
            node("9", "generic", "", &["2", "4", "5"], 9),
            heading,
            node("3", "StaticText", "Hello", &[], 13),
            node("4", "paragraph", "", &["7", "8"], 14),
            textbox,
            node("6", "generic", "", &[], 16),
            node("7", "StaticText", "Some text ", &[], 17),
            node("8", "StaticText", "bold", &[], 18),
        ]
    }

    #[test]
    fn renders_playwright_mcp_lines() {
        let mut refs = Refs::default();
        let yaml = render(&tree(), &mut refs, Scope::default());
        assert_eq!(
            yaml,
            "- heading \"Hello\" [level=1] [ref=e1]\n\
             - paragraph [ref=e2]: Some text bold\n\
             - textbox \"Name\" [ref=e3]: v\n"
        );
        assert_eq!(refs.resolve("e3"), Some(15));
    }

    #[test]
    fn refs_stay_while_role_and_name_hold() {
        let mut refs = Refs::default();
        render(&tree(), &mut refs, Scope::default());
        let mut nodes = tree();
        nodes[2].name = serde_json::from_value(serde_json::json!({"value": "Bye"})).unwrap();
        nodes[3].name = nodes[2].name.clone();
        let yaml = render(&nodes, &mut refs, Scope::default());
        assert!(
            yaml.contains("heading \"Bye\" [level=1] [ref=e4]"),
            "{yaml}"
        );
        assert!(yaml.contains("textbox \"Name\" [ref=e3]"), "{yaml}");
        assert_eq!(refs.resolve("e1"), None);
    }

    #[test]
    fn scalars_are_quoted_only_when_needed() {
        assert_eq!(yaml_value("plain words"), "plain words");
        assert_eq!(yaml_value("a: b"), "\"a: b\"");
        assert_eq!(yaml_value("42"), "\"42\"");
        assert_eq!(yaml_value("- dash"), "\"- dash\"");
    }
}
