#!/usr/bin/env python3
"""Assembles the Docker build context that .dockerignore admits, so CI builds from exactly it.

Usage: docker_context.py OUT_DIR

Copies every tracked and untracked-but-not-ignored file of the repository that .dockerignore lets
through into OUT_DIR (Docker's rules: patterns in order, the last match wins, `!` re-includes, a
pattern matching a directory covers what is under it, `*` does not cross `/`), then checks that
each source of the Dockerfile's COPY instructions is there. CI then builds the static binary from
OUT_DIR: a build input missing from the allowlist fails CI instead of the first image build.
"""

import fnmatch
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def patterns():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:] if include else line
        if "**" in pattern or pattern.startswith("/"):
            sys.exit(f"docker_context.py: pattern {line!r} is beyond the subset this script implements")
        rules.append((include, pattern.rstrip("/").split("/")))
    return rules


def matches(parts, path_parts):
    """The pattern matches the path or one of its parent directories (Docker's semantics)."""
    return len(path_parts) >= len(parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(path_parts, parts))


def admitted(path, rules):
    keep = True
    for include, parts in rules:
        if matches(parts, path.split("/")):
            keep = include
    return keep


def main(out):
    rules = patterns()
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    out = pathlib.Path(out)
    count = 0
    for path in filter(None, listed):
        if (ROOT / path).is_file() and admitted(path, rules):
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, out / path)
            count += 1
    missing = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            missing += [s for s in sources if not (out / s).exists()]
    if missing:
        sys.exit(f"docker_context.py: the Dockerfile copies {missing}, which .dockerignore leaves out")
    print(f"docker context: {count} files in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
