import ast, os, sys
root = sys.argv[1] if len(sys.argv) > 1 else "ppgmm"
mods = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".py"):
            p = os.path.join(dp, f)
            m = p[:-3].replace("/", ".")
            if m.endswith(".__init__"): m = m[:-9]
            mods[m] = p
graph = {m: set() for m in mods}
private = []
long = []
for m, p in mods.items():
    tree = ast.parse(open(p).read())
    pkg = m if p.endswith("__init__.py") else m.rsplit(".", 1)[0]
    tc_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in ast.walk(node): tc_nodes.add(id(n))
    for node in ast.walk(tree):
        if id(node) in tc_nodes: continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ppgmm"): continue
            for alias in node.names:
                full = target + "." + alias.name
                t = full if full in mods else target
                if t in mods and t != m: graph[m].add(t)
                if alias.name.startswith("_") and t == target and target != m:
                    private.append((m, full))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ppgmm") and alias.name in mods and alias.name != m:
                    graph[m].add(alias.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                body = body[1:]
            if not body: continue
            lines = set()
            src = open(p).read().splitlines()
            start, end = body[0].lineno, node.end_lineno
            n = sum(1 for i in range(start - 1, end) if src[i].strip() and not src[i].strip().startswith("#"))
            if n > 80: long.append((m, node.name, n))
# importing a submodule imports its parent packages
for m in list(graph):
    parts = m.split(".")
    for i in range(1, len(parts)):
        par = ".".join(parts[:i])
        if par in mods and par != m:
            pass
# cycles via DFS (Tarjan)
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in graph[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in graph:
    if v not in idx: sc(v)
print("cycles:", sccs)
print("private imports:", private)
print("long functions:", long)
