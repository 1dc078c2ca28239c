"""The layer rule of src/README.md, checked against the code (TAP output).

Each folder of src/ is a layer; src/meson.build lists them bottom-up. A
folder's README says "May include: a, b" (lower layers only) and, for an
adapter, "Only here: <lib/" (the one folder that includes that library).
Every #include in src/<layer>/ and include/semgate/<layer>/ must keep to
its folder's line. Usage: layers.py SOURCE_ROOT
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
src = os.path.join(root, "src")
inc = os.path.join(root, "include", "semgate")
results = []


def check(ok, name, detail=()):
    results.append((ok, name, [] if ok else list(detail)))


with open(os.path.join(src, "meson.build")) as f:
    m = re.search(r"foreach layer : \[([^\]]*)\]", f.read())
order = re.findall(r"'([a-z]+)'", m.group(1)) if m else []
check(bool(order), "src/meson.build lists the layers bottom-up")

folders = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
check(sorted(order) == folders, "every folder of src/ is a listed layer",
      [f"listed {sorted(order)}, on disk {folders}"])

allowed, only_here = {}, {}
for layer in order:
    path = os.path.join(src, layer, "README.md")
    text = open(path).read() if os.path.exists(path) else ""
    may = re.search(r"^May include: (.*)$", text, re.M)
    check(bool(may), f"src/{layer}/README.md has a 'May include:' line")
    names = [] if not may else [n.strip() for n in may.group(1).split(",")]
    allowed[layer] = {n for n in names if n and n != "(nothing)"}
    for lib in re.findall(r"^Only here: (.*)$", text, re.M):
        only_here[lib.strip()] = layer
    below = set(order[:order.index(layer)])
    upward = sorted(allowed[layer] - below)
    check(not upward, f"{layer} may include only lower layers",
          [f"{layer} names {u}, which is not below it" for u in upward])

include_re = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def files_of(layer):
    for base in (os.path.join(src, layer), os.path.join(inc, layer)):
        if os.path.isdir(base):
            for name in sorted(os.listdir(base)):
                if name.endswith((".c", ".h")):
                    yield os.path.join(base, name)


for layer in order:
    bad = []
    for path in files_of(layer):
        rel = os.path.relpath(path, root)
        for kind, target in include_re.findall(open(path, errors="replace").read()):
            if kind == '"':
                parts = target.split("/")
                if parts[0] == "semgate" and len(parts) == 3:
                    if parts[1] != layer and parts[1] not in allowed[layer]:
                        bad.append(f"{rel} includes {target}")
                elif "/" in target or not os.path.exists(
                        os.path.join(os.path.dirname(path), target)):
                    bad.append(f"{rel} includes \"{target}\": not a header of its own folder")
            else:
                for lib, owner in only_here.items():
                    if ("<" + target).startswith(lib) and owner != layer:
                        bad.append(f"{rel} includes <{target}>, which only {owner}/ may")
    check(not bad, f"{layer}: every #include keeps to the layer rule", bad)

for i, (ok, name, detail) in enumerate(results, 1):
    print(f"{'ok' if ok else 'not ok'} {i} - {name}")
    for d in detail:
        print(f"# {d}")
print(f"1..{len(results)}")
sys.exit(0 if all(ok for ok, _, _ in results) else 1)
