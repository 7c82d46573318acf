"""What other local users see of the processes a test started."""

from __future__ import annotations

import contextlib
from pathlib import Path


def process_tree_argv(pid: int) -> list[str]:
    """The command lines, as ``ps`` shows them to anyone, of ``pid`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # exited meanwhile
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    argvs = []
    for member in tree:
        with contextlib.suppress(OSError):
            argvs.append(Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return argvs
