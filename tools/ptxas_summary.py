"""Condense nvcc -Xptxas -v output to one line per kernel (sm_90): registers and spills."""
import re
import subprocess
import sys

entries = []
name = arch = None
spill = ""
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
    if m:
        name, arch = m.groups()
        spill = ""
        continue
    # ptxas reports an entry's spills before its register count.
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and (m.group(1) != "0" or m.group(2) != "0"):
        spill = f"  SPILLS: {m.group(0)}"
    m = re.search(r"Used (\d+) registers", line)
    if m and arch == "sm_90":
        entries.append([name, int(m.group(1)), spill])
if entries:
    demangled = subprocess.run(["c++filt"], input="\n".join(e[0] for e in entries), capture_output=True,
                               text=True).stdout.splitlines()
    for (mangled, regs, spill), full in zip(entries, demangled or [e[0] for e in entries]):
        # "void ns::(anonymous namespace)::name<T>(args)": the name is what precedes the template or argument list.
        head = re.sub(r"^(?:void )?", "", full).replace("(anonymous namespace)", "")
        short = re.split(r"[<(]", head)[0].split("::")[-1]
        tmpl = re.search(r"<([^<>]*)>", full)
        print(f"    {short}<{tmpl.group(1) if tmpl else ''}>: {regs} registers{spill}")
