"""Builds the environment the runner gives to the processes it spawns (docs/protocol.md §1.4), without touching os.environ."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import attrs

from kernel_runner.excerpts import excerpt
from kernel_runner.langs.spec import LOCAL_FS, FsView, LangSpec, PathPromotion, Promote, PromoteFirstMatch

DEFAULT_ENVIRON_FILE = Path("/home/config/environ.txt")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KRUNNER_LIB_DIR = "/opt/backend.ai/lib"
# Linux's MAX_ARG_STRLEN: the most one argument or one KEY=VALUE string may hold (128 KiB with 4 KiB pages).
MAX_ARG_STRLEN = 32 * os.sysconf("SC_PAGE_SIZE")

# docs/protocol.md §1.4 step 2: always present, kept from the runner env or "".
_INHERITED_KEYS = ("LD_LIBRARY_PATH", "LD_PRELOAD", "SSH_AUTH_SOCK", "SSH_AGENT_PID")

# docs/protocol.md §1.4 step 6, for every language; the last applied ends up first.
COMMON_PATH_PROMOTIONS: tuple[PathPromotion, ...] = (
    Promote(path="/usr/local/cuda/bin", if_dir="/usr/local/cuda/bin"),
    Promote(path="/usr/local/nvidia/bin", if_dir="/usr/local/nvidia/bin"),
    Promote(path="/home/linuxbrew/.linuxbrew/bin", if_dir="/home/linuxbrew/.linuxbrew"),
    Promote(path="{home}/.local/bin"),
)


@attrs.frozen(kw_only=True)
class ChildEnv:
    """The child env, plus what upstream also wrote into its own os.environ; the caller decides about that."""

    env: Mapping[str, str]
    # environ.txt pairs in file order (later lines win); upstream put them in os.environ too (docs/protocol.md §1.4 step 5).
    runner_env_additions: Mapping[str, str]
    problems: tuple[str, ...] = ()  # one line each, for the caller to log


def build_child_env(
    *,
    base_environ: Mapping[str, str],
    lang: LangSpec,
    environ_file: Path | None = DEFAULT_ENVIRON_FILE,
    home: str = "/home/work",
    fs: FsView = LOCAL_FS,
) -> ChildEnv:
    """docs/protocol.md §1.4 steps 1-7. Step 8 (python user site in PYTHONPATH) is replaced by langs.batch_env."""
    env = dict(base_environ)  # step 1
    env.update(LANG="C.UTF-8", HOME=home, TERM="xterm")  # step 2: these always override
    for key in (*_INHERITED_KEYS, *lang.env_inherit):
        env[key] = base_environ.get(key, "")
    env.update({key: value.format(home=home) for key, value in lang.env_defaults.items()})
    env.setdefault("PATH", DEFAULT_PATH)  # step 3
    env.setdefault("SHELL", "/bin/ash" if fs.is_file(Path("/bin/ash")) else "/bin/bash")  # step 4
    additions, problems = read_environ_file(environ_file) if environ_file is not None else ({}, [])
    env.update(additions)  # step 5
    env["PATH"] = apply_promotions(env["PATH"], (*COMMON_PATH_PROMOTIONS, *lang.path_promotions), home=home, fs=fs)
    return ChildEnv(
        env=MappingProxyType(env),
        runner_env_additions=MappingProxyType(additions),
        problems=tuple(problems),
    )


def read_environ_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """KEY=VALUE per line, split at the first '='; a missing file is no error (docs/protocol.md §1.4 step 5).

    Upstream stopped at the first line without '=', blank lines included (docs/protocol.md §10.2 #20). We skip blank
    lines silently and report other bad lines, keeping everything else.
    """
    try:
        # surrogateescape keeps undecodable bytes; subprocess turns them back into the same bytes.
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"{path}: cannot read ({exc.strerror or exc}); ignored"]
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            problems.append(f"{path}:{lineno}: no '=' in line; skipped")
        elif not key or "\0" in line:
            problems.append(f"{path}:{lineno}: not a valid KEY=VALUE pair; skipped")
        elif (size := len(os.fsencode(line)) + 1) > MAX_ARG_STRLEN:
            # Linux refuses a longer KEY=VALUE string (E2BIG), which would make every process the runner starts fail.
            problems.append(f"{path}:{lineno}: {excerpt(key)} is {size} bytes, over Linux's limit of "
                            f"{MAX_ARG_STRLEN} bytes for one variable; dropped")
        else:
            pairs[key] = value
    return pairs, problems


def promote_path(path_value: str, entry: str) -> str:
    """Remove every entry equal to `entry`, then put it first; an empty entry changes nothing (docs/protocol.md §1.4 step 6)."""
    if not entry:
        return path_value
    rest = [part for part in path_value.split(":") if part != entry] if path_value else []
    return ":".join([entry, *rest])


def apply_promotions(path_value: str, promotions: Iterable[PathPromotion], *, home: str, fs: FsView) -> str:
    for promotion in promotions:
        match promotion:
            case Promote(path=path, if_dir=if_dir):
                if if_dir is None or fs.is_dir(Path(if_dir.format(home=home))):
                    path_value = promote_path(path_value, path.format(home=home))
            case PromoteFirstMatch(pattern=pattern):
                found = next((p for p in fs.glob(Path("/"), pattern) if fs.is_dir(p)), None)
                if found is not None:
                    path_value = promote_path(path_value, str(found))
    return path_value


def strip_runner_libraries(env: Mapping[str, str]) -> dict[str, str]:
    """A service's env without the runner's own libraries on LD_LIBRARY_PATH (docs/protocol.md §6.2 step 8).

    Upstream deleted the substring "/opt/backend.ai/lib:"; we drop that exact entry, which gives the same result for
    the entrypoint's prefix but also catches the entry at the end, and cannot cut a longer path that merely contains
    the text.
    """
    result = dict(env)
    if "LD_LIBRARY_PATH" in result:
        parts = result["LD_LIBRARY_PATH"].split(":")
        result["LD_LIBRARY_PATH"] = ":".join(part for part in parts if part != KRUNNER_LIB_DIR)
    return result
