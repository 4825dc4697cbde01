"""Import cycles between Rust files (scripts/check-shape.sh): every `use` of a path in the same
crate (`crate::`, `super::`, `self::`, or a child module), `pub use` included, is resolved to the
file that defines the module it names, and the strongly connected components of that graph are
printed. Indented `use super::` lines belong to inline modules (`mod x { use super::*; }`), whose
parent is the same file, and are skipped. Exits 1 when there is a cycle."""
import os, re, sys, pathlib
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else '.')
crates = [p.parent for p in root.rglob('Cargo.toml') if 'target' not in p.parts and (p.parent/'src').is_dir()]
edges = {}
def modfile(base_dir, parts):
    # resolve module path parts under base_dir (a directory of modules) to a file
    d = base_dir
    f = None
    for i, part in enumerate(parts):
        cand1 = d / f'{part}.rs'; cand2 = d / part / 'mod.rs'
        if cand1.exists(): f = cand1; d = d / part
        elif cand2.exists(): f = cand2; d = d / part
        else: break
    return f
for c in crates:
    src = c / 'src'
    for f in src.rglob('*.rs'):
        text = f.read_text()
        # module dir of this file
        if f.name in ('mod.rs', 'lib.rs', 'main.rs'): here = f.parent
        else: here = f.parent / f.stem
        parent_dir = here.parent
        # strip cfg(test) tail
        text = re.split(r'#\[cfg\(test\)\]\s*mod \w+ \{', text)[0]
        for m in re.finditer(r'^[ \t]*(?:pub(?:\([a-z]+\))?\s+)?use\s+([A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_0-9]+)*)', text, re.M):
            path = m.group(1).split('::')
            if path[0] == 'super' and m.group(0)[:1].isspace():
                continue
            if path[0] not in ('crate', 'super', 'self'):
                if (here / f'{path[0]}.rs').exists() or (here / path[0] / 'mod.rs').exists():
                    path = ['self'] + path
                else:
                    continue
            if path[0] == 'crate': base = src; rest = path[1:]
            elif path[0] == 'self': base = here; rest = path[1:]
            else:
                base = parent_dir; rest = path[1:]
                while rest and rest[0] == 'super': base = base.parent; rest = rest[1:]
            target = modfile(base, rest) if rest else None
            if target is None:
                # the module file of `base` itself
                for cand in [base.with_suffix('.rs'), base / 'mod.rs', base / 'lib.rs', base / 'main.rs']:
                    if cand.exists(): target = cand; break
            if target and target != f:
                edges.setdefault(str(f), set()).add(str(target))
# tarjan
index = {}; low = {}; stack = []; on = set(); out = []; i = [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: out.append(comp)
for v in list(edges):
    if v not in index: strong(v)
for comp in out:
    print('shape: import cycle between', ' '.join(sorted(os.path.relpath(x, root) for x in comp)), file=sys.stderr)
if out:
    sys.exit(1)
