#!/usr/bin/env python3
"""Assembles the Docker build context that .dockerignore admits, so CI builds from exactly it.

Usage: docker_context.py [--prebuilt] OUT_DIR

Copies every tracked and untracked-but-not-ignored file of the repository that .dockerignore lets
through into OUT_DIR (Docker's rules: patterns in order, the last match wins, `!` re-includes, a
pattern matching a directory covers what is under it, `*` does not cross `/`), then checks that
each source of the Dockerfile's COPY instructions is there. CI then builds the static binary from
OUT_DIR: a build input missing from the allowlist fails CI instead of the first image build.

The `prebuilt` stage copies a build output (target/static/<arch>/, written by
scripts/build-static.sh), which git does not list: its sources are checked to be admitted for each
architecture, and `--prebuilt` copies the ones that exist, for an image build with
BINARY_SOURCE=prebuilt (scripts/runtime-check.sh).
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


ARCHITECTURES = ("amd64", "arm64")


def main(out, prebuilt):
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
    stage = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stage = words[-1] if len(words) > 2 and words[-2].upper() == "AS" else None
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            if stage == "prebuilt":
                for source in (s.replace("${TARGETARCH}", arch) for s in sources for arch in ARCHITECTURES):
                    if not admitted(source, rules):
                        missing.append(source)
                    elif prebuilt and (ROOT / source).is_file():
                        (out / source).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ROOT / source, out / source)
                        count += 1
            else:
                missing += [s for s in sources if not (out / s).exists()]
    if missing:
        sys.exit(f"docker_context.py: the Dockerfile copies {missing}, which .dockerignore leaves out")
    print(f"docker context: {count} files in {out}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    with_prebuilt = "--prebuilt" in arguments
    arguments = [a for a in arguments if a != "--prebuilt"]
    if len(arguments) != 1:
        sys.exit(__doc__)
    main(arguments[0], with_prebuilt)
