"""The child environment (docs/protocol.md §1.4): defaults, PATH promotions, environ.txt, and the service env."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import attrs
import pytest

from kernel_runner.langs import get_lang
from kernel_runner.procs.childenv import DEFAULT_PATH, build_child_env, promote_path, read_environ_file, strip_runner_libraries


@attrs.define
class FakeFs:
    """Only folders and files given here exist; glob matches absolute patterns part by part."""

    dirs: set[str] = attrs.field(factory=set)
    files: set[str] = attrs.field(factory=set)

    def is_file(self, path: Path) -> bool:
        return str(path) in self.files

    def is_dir(self, path: Path) -> bool:
        return str(path) in self.dirs

    def is_executable(self, path: Path) -> bool:
        return False

    def glob(self, root: Path, pattern: str) -> list[Path]:
        pats = Path(pattern).parts
        return sorted(
            Path(d)
            for d in self.dirs
            if len(Path(d).parts) == len(pats)
            and all(fnmatch.fnmatchcase(p, q) for p, q in zip(Path(d).parts, pats, strict=True))
        )


BASE = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/zsh", "HOME": "/root", "LANG": "en_US.UTF-8", "KEEP": "me"}


def _env(
    lang: str = "c", base: dict[str, str] | None = None, environ_file: Path | None = None, fs: FakeFs | None = None
) -> dict[str, str]:
    built = build_child_env(
        base_environ=BASE if base is None else base, lang=get_lang(lang), environ_file=environ_file, fs=fs or FakeFs()
    )
    assert built.problems == ()
    return dict(built.env)


def test_fixed_defaults_override_the_container() -> None:
    env = _env()
    assert (env["LANG"], env["HOME"], env["TERM"]) == ("C.UTF-8", "/home/work", "xterm")
    assert env["KEEP"] == "me"
    assert env["SHELL"] == "/bin/zsh"


def test_library_and_agent_keys_are_always_present() -> None:
    env = _env(base={"LD_PRELOAD": "/x.so"})
    assert env["LD_PRELOAD"] == "/x.so"
    assert env["LD_LIBRARY_PATH"] == env["SSH_AUTH_SOCK"] == env["SSH_AGENT_PID"] == ""
    assert "PYTHONPATH" not in env
    assert _env("python", base={})["PYTHONPATH"] == ""
    assert _env("python", base={"PYTHONPATH": "/p"})["PYTHONPATH"] == "/p"


def test_per_language_defaults() -> None:
    assert _env("julia", base={"JULIA_LOAD_PATH": "/mine"})["JULIA_LOAD_PATH"] == "/opt/julia:/usr/local/julia"
    assert _env("golang", base={"GOPATH": "/go"})["GOPATH"] == "/home/work"
    custom_home = build_child_env(base_environ={}, lang=get_lang("golang"), environ_file=None, home="/w", fs=FakeFs())
    assert custom_home.env["GOPATH"] == "/w"
    assert custom_home.env["HOME"] == "/w"


def test_path_and_shell_fill_in() -> None:
    env = _env(base={})
    assert env["PATH"] == "/home/work/.local/bin:" + DEFAULT_PATH
    assert env["SHELL"] == "/bin/bash"
    assert _env(base={}, fs=FakeFs(files={"/bin/ash"}))["SHELL"] == "/bin/ash"


def test_golang_worked_example() -> None:
    # docs/protocol.md §1.4 step 7 (V): the last promotion applied ends up first.
    env = _env("golang", base={"PATH": "/usr/bin:/go/bin"})
    assert env["PATH"] == "/home/work/bin:/usr/local/go/bin:/go/bin:/home/work/.local/bin:/usr/bin"


def test_conditional_promotions_need_their_folders() -> None:
    assert _env(base={"PATH": "/bin"})["PATH"] == "/home/work/.local/bin:/bin"
    fs = FakeFs(dirs={"/usr/local/cuda/bin", "/usr/local/nvidia/bin", "/home/linuxbrew/.linuxbrew"})
    env = _env(base={"PATH": "/bin:/usr/local/cuda/bin"}, fs=fs)
    assert env["PATH"] == "/home/work/.local/bin:/home/linuxbrew/.linuxbrew/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/bin"


def test_java_promotes_first_jvm_match_bin_last() -> None:
    fs = FakeFs(dirs={"/usr/lib/jvm/java-8/jre/bin", "/usr/lib/jvm/java-8/bin", "/usr/lib/jvm/java-11/bin"})
    env = _env("java", base={"PATH": "/bin"}, fs=fs)
    assert env["PATH"] == "/usr/lib/jvm/java-11/bin:/usr/lib/jvm/java-8/jre/bin:/home/work/.local/bin:/bin"


def test_haskell_promotions_skip_missing_globs() -> None:
    fs = FakeFs(dirs={"/opt/ghc/9.2/bin", "/opt/cabal/3.6/bin"})
    env = _env("haskell", base={"PATH": "/bin"}, fs=fs)
    assert env["PATH"] == "/home/work/.cabal/bin:/opt/ghc/9.2/bin:/opt/cabal/3.6/bin:/home/work/.local/bin:/bin"


def test_julia_promotions_are_unconditional() -> None:
    env = _env("julia", base={"PATH": "/bin"})
    assert env["PATH"].split(":")[:4] == [
        "/opt/julia/bin",
        "/usr/local/julia/bin",
        "/usr/local/nvidia/bin",
        "/usr/local/cuda/bin",
    ]


@pytest.mark.parametrize(
    ("path", "entry", "expected"),
    [
        ("/a:/b:/a", "/a", "/a:/b"),
        ("/b", "", "/b"),
        ("", "/a", "/a"),
        ("/a:/a/", "/a", "/a:/a/"),
    ],
)
def test_promote_path(path: str, entry: str, expected: str) -> None:
    assert promote_path(path, entry) == expected


def test_environ_file_skips_blank_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    envfile = tmp_path / "environ.txt"
    envfile.write_text("A=1\n\nB=x=y\r\nbroken line\n  \nHOME=/elsewhere\n=nokey\nA=2\n")
    built = build_child_env(base_environ=BASE, lang=get_lang("python"), environ_file=envfile, fs=FakeFs())
    assert dict(built.runner_env_additions) == {"A": "2", "B": "x=y", "HOME": "/elsewhere"}
    assert built.env["A"] == "2"
    assert built.env["B"] == "x=y"
    assert built.env["HOME"] == "/elsewhere"  # environ.txt comes after the fixed defaults (step 5)
    assert built.problems == (f"{envfile}:4: no '=' in line; skipped", f"{envfile}:7: not a valid KEY=VALUE pair; skipped")


def test_environ_file_path_is_promoted_like_any_other(tmp_path: Path) -> None:
    envfile = tmp_path / "environ.txt"
    envfile.write_text("PATH=/custom/bin:/home/work/.local/bin\n")
    assert _env(environ_file=envfile)["PATH"] == "/home/work/.local/bin:/custom/bin"


def test_missing_environ_file_is_silent(tmp_path: Path) -> None:
    assert read_environ_file(tmp_path / "nope.txt") == ({}, [])


def test_unreadable_environ_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    pairs, problems = read_environ_file(tmp_path)  # a folder
    assert pairs == {}
    assert len(problems) == 1
    assert str(tmp_path) in problems[0]


def test_child_env_is_read_only() -> None:
    built = build_child_env(base_environ=BASE, lang=get_lang("c"), environ_file=None, fs=FakeFs())
    with pytest.raises(TypeError):
        built.env["X"] = "1"  # type: ignore[index]


@pytest.mark.parametrize(
    ("ld_path", "expected"),
    [
        ("/opt/backend.ai/lib:/usr/lib", "/usr/lib"),
        ("/opt/backend.ai/lib:", ""),
        ("/usr/lib:/opt/backend.ai/lib", "/usr/lib"),
        ("/x/opt/backend.ai/lib:/y", "/x/opt/backend.ai/lib:/y"),
        ("", ""),
    ],
)
def test_the_runner_libraries_are_stripped_as_one_exact_entry(ld_path: str, expected: str) -> None:
    env = strip_runner_libraries({"LD_LIBRARY_PATH": ld_path, "A": "1"})
    assert env == {"LD_LIBRARY_PATH": expected, "A": "1"}


def test_an_env_without_ld_library_path_is_left_alone() -> None:
    assert strip_runner_libraries({"A": "1"}) == {"A": "1"}


def test_the_whole_child_env_listed(tmp_path: Path) -> None:
    """Every key a child gets, and nothing else (docs/protocol.md §1.4): the runner's env, the fixed keys, environ.txt."""
    envfile = tmp_path / "environ.txt"
    envfile.write_text("BACKENDAI_KERNEL_ID=k1\nLD_LIBRARY_PATH=/opt/backend.ai/lib:/usr/lib\n")
    built = build_child_env(base_environ={"PATH": "/usr/bin", "SECRET_OF_THE_RUNNER": "kept, as upstream",
                                          "TERM": "dumb"},
                            lang=get_lang("python"), environ_file=envfile, home="/w", fs=FakeFs())
    assert dict(built.env) == {
        "PATH": "/w/.local/bin:/usr/bin",
        "SECRET_OF_THE_RUNNER": "kept, as upstream",
        "LANG": "C.UTF-8",
        "HOME": "/w",
        "TERM": "xterm",
        "LD_LIBRARY_PATH": "/opt/backend.ai/lib:/usr/lib",
        "LD_PRELOAD": "",
        "SSH_AUTH_SOCK": "",
        "SSH_AGENT_PID": "",
        "PYTHONPATH": "",
        "SHELL": "/bin/bash",
        "BACKENDAI_KERNEL_ID": "k1",
    }
    # A service gets the same, without the runner's own libraries (docs/protocol.md §6.2 step 8).
    service_env = strip_runner_libraries(built.env)
    assert service_env == {**built.env, "LD_LIBRARY_PATH": "/usr/lib"}
