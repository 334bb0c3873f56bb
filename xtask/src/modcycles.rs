//! The module-cycle check of `cargo xtask lint`: no two sibling modules of a crate may depend
//! on each other, directly or around a longer loop.
//!
//! Rust allows such cycles, so nothing else catches them, yet they are what makes a module
//! impossible to read (or test, or move) on its own: the dataplane boundary and the
//! controllers/scheduler split were both once broken this way. The check reads source text,
//! not the compiler's view, which is enough for a codebase that names its paths with
//! `crate::…` and `super::…` (`use` lists included):
//!
//! 1. every file under `src/` (but `src/bin/`) is a module, its path taken from the file name;
//! 2. each path it names is resolved to a module; the two module paths are cut at their first
//!    differing segment, giving an edge between two siblings (`proxy::runner` →
//!    `proxy::ebpf` for `crate::proxy::ebpf::maps::X` named in `proxy/runner.rs`); a module
//!    naming its own ancestor or descendant is no edge;
//! 3. the test modules at the end of a file (`#[cfg(test)] mod …`) are left out: tests may
//!    reach anywhere;
//! 4. strongly connected components of more than one module are the cycles, each reported with
//!    one path that makes every edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

type ModPath = Vec<String>;

/// One cycle: its modules and, for each edge inside it, a file and the path that makes it.
pub struct Cycle {
    pub modules: Vec<String>,
    pub edges: Vec<String>,
}

/// The cycles among sibling modules of the crate whose sources are in `src`.
pub fn cycles(src: &Path) -> Result<Vec<Cycle>> {
    let mut modules = BTreeMap::new();
    for file in rust_files(src)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let module = module_path(src, &file);
        let refs = referenced_paths(&strip_tests(&text), &module);
        modules.insert(module, (file, refs));
    }
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    let mut graph = Graph::default();
    for (module, (file, refs)) in &modules {
        for target in refs {
            if let Some((from, to)) = sibling_edge(module, target, &known) {
                let why = format!(
                    "{} -> {}  ({} names crate::{})",
                    from.join("::"),
                    to.join("::"),
                    file.strip_prefix(src).unwrap_or(file).display(),
                    target.join("::")
                );
                graph.add(from, to, why);
            }
        }
    }
    Ok(graph.cycles())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                // src/bin holds separate crates, not modules of this one.
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `proxy/ebpf/mod.rs` → `[proxy, ebpf]`; `lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|last| ["mod", "lib", "main"].contains(&last.as_str()))
    {
        parts.pop();
    }
    parts
}

/// The file without its trailing test modules and without line comments.
fn strip_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let next_is_mod = lines.peek().is_some_and(|l| {
            let l = l.trim_start();
            l.starts_with("mod ") || l.starts_with("pub mod ") || l.starts_with("pub(crate) mod ")
        });
        if line.trim() == "#[cfg(test)]" && next_is_mod {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module path named as `crate::…` or `super::…` (also inside `{…}` use lists), made
/// absolute.
fn referenced_paths(code: &str, module: &ModPath) -> BTreeSet<ModPath> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let word_start = i == 0 || !is_ident(bytes[i - 1]);
        let base = if !word_start {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("super::") {
            let mut ups = 0;
            let mut len = 0;
            while rest[len..].starts_with("super::") {
                ups += 1;
                len += "super::".len();
            }
            let keep = module.len().saturating_sub(ups);
            Some((module[..keep].to_vec(), len))
        } else {
            None
        };
        match base {
            Some((base, len)) => {
                for path in paths_after(&rest[len..]) {
                    let mut full = base.clone();
                    full.extend(path);
                    out.insert(full);
                }
                i += len;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// The paths at the start of `text`: `a::b::C` gives one, `{a::b, c}` gives one per entry.
fn paths_after(text: &str) -> Vec<ModPath> {
    if let Some(list) = text.strip_prefix('{') {
        let end = list.find('}').unwrap_or(list.len());
        return list[..end]
            .split(',')
            .map(|entry| simple_path(entry.trim_start()))
            .filter(|p| !p.is_empty())
            .collect();
    }
    vec![simple_path(text)]
}

fn simple_path(text: &str) -> ModPath {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The sibling modules that `module` naming `target` connects, if any.
fn sibling_edge(
    module: &ModPath,
    target: &ModPath,
    known: &BTreeSet<ModPath>,
) -> Option<(ModPath, ModPath)> {
    let common = module
        .iter()
        .zip(target)
        .take_while(|(a, b)| a == b)
        .count();
    if common >= module.len() || common >= target.len() {
        return None; // its own ancestor or descendant
    }
    let to = target[..=common].to_vec();
    // An item of the common parent (`crate::Workspace`) is not a module.
    let is_module = known.iter().any(|m| m.starts_with(&to));
    is_module.then(|| (module[..=common].to_vec(), to))
}

#[derive(Default)]
struct Graph {
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
    why: BTreeMap<(ModPath, ModPath), String>,
}

impl Graph {
    fn add(&mut self, from: ModPath, to: ModPath, why: String) {
        self.edges
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
        self.why.entry((from, to)).or_insert(why);
    }

    /// Tarjan's strongly connected components with more than one member.
    fn cycles(&self) -> Vec<Cycle> {
        let mut tarjan = Tarjan::default();
        for node in self.edges.keys() {
            if !tarjan.index.contains_key(node) {
                tarjan.visit(node, &self.edges);
            }
        }
        tarjan
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|members| self.describe(&members))
            .collect()
    }

    fn describe(&self, members: &[ModPath]) -> Cycle {
        let mut edges = Vec::new();
        for a in members {
            for b in members {
                if let Some(why) = self.why.get(&(a.clone(), b.clone())) {
                    edges.push(why.clone());
                }
            }
        }
        Cycle {
            modules: members.iter().map(|m| m.join("::")).collect(),
            edges,
        }
    }
}

#[derive(Default)]
struct Tarjan {
    next: usize,
    index: BTreeMap<ModPath, usize>,
    low: BTreeMap<ModPath, usize>,
    stack: Vec<ModPath>,
    on_stack: BTreeSet<ModPath>,
    components: Vec<Vec<ModPath>>,
}

impl Tarjan {
    fn visit(&mut self, node: &ModPath, edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) {
        self.index.insert(node.clone(), self.next);
        self.low.insert(node.clone(), self.next);
        self.next += 1;
        self.stack.push(node.clone());
        self.on_stack.insert(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if !self.index.contains_key(next) {
                self.visit(next, edges);
                let low = self.low[node].min(self.low[next]);
                self.low.insert(node.clone(), low);
            } else if self.on_stack.contains(next) {
                let low = self.low[node].min(self.index[next]);
                self.low.insert(node.clone(), low);
            }
        }
        if self.low[node] == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack.remove(&member);
                let done = &member == node;
                component.push(member);
                if done {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ModPath {
        s.split("::").map(str::to_owned).collect()
    }

    #[test]
    fn names_resolve_to_sibling_edges() {
        let module = p("proxy::runner");
        let refs = referenced_paths(
            "use crate::proxy::ebpf::maps::X;\nuse super::{metrics::M, dataplane};\nfn f() { supercrate::x(); }",
            &module,
        );
        assert!(refs.contains(&p("proxy::ebpf::maps::X")));
        assert!(refs.contains(&p("proxy::metrics::M")));
        assert!(refs.contains(&p("proxy::dataplane")));
        assert_eq!(refs.len(), 3);
        let known: BTreeSet<ModPath> =
            [p("proxy"), p("proxy::ebpf::maps"), p("proxy::runner")].into();
        assert_eq!(
            sibling_edge(&module, &p("proxy::ebpf::maps::X"), &known),
            Some((p("proxy::runner"), p("proxy::ebpf")))
        );
        assert_eq!(sibling_edge(&module, &p("proxy::Mode"), &known), None);
    }

    #[test]
    fn a_loop_through_three_modules_is_one_cycle() {
        let mut g = Graph::default();
        g.add(p("a"), p("b"), "a->b".into());
        g.add(p("b"), p("c"), "b->c".into());
        g.add(p("c"), p("a"), "c->a".into());
        g.add(p("c"), p("d"), "c->d".into());
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].modules.len(), 3);
        assert_eq!(cycles[0].edges.len(), 3);
    }

    #[test]
    fn test_modules_are_left_out() {
        let text = "use crate::a::X;\n#[cfg(test)]\nmod tests {\n use crate::b::Y;\n}\n";
        let refs = referenced_paths(&strip_tests(text), &p("c"));
        assert_eq!(refs, [p("a::X")].into());
    }

    /// The check itself, in the test suite too, so that CI refuses a new cycle even where
    /// nobody ran `cargo xtask lint`.
    #[test]
    fn the_workspace_has_no_module_cycle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        for krate in crate::lint::CYCLE_CHECKED_CRATES {
            for cycle in cycles(&root.join(krate).join("src")).unwrap() {
                found.push(format!("{krate}: {}", cycle.edges.join("; ")));
            }
        }
        assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
    }
}
