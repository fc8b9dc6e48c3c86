"""The few language behaviours that are code rather than data: the Java query and the batch input hook's home."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

from kernel_runner.langs.spec import (
    BATCH_SITE_DIR,
    INPUT_PYTHON_VAR,
    INPUT_SOCKET_VAR,
    FileToWrite,
    LangContext,
    LangSpec,
    QueryPlan,
    ShellStep,
)

QueryHook = Callable[[LangSpec, str, LangContext, Path], QueryPlan]

# --------------------------------------------------------------------------------------------
# Java query (docs/protocol.md §8.2)
# --------------------------------------------------------------------------------------------

_PUBLIC_CLASS = re.compile(r"\bpublic\s+(?:(?:final|abstract|strictfp)\s+)*class\s+([A-Za-z_$][\w$]*)[^{;]*\{")
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_STDIN_CLASS_NAME = "BackendAiKernelStdin"
_INSTALL_STDIN = f" static {{ {_STDIN_CLASS_NAME}.install(); }}"

# Replaces upstream's LablupPatches.java, which could never connect (docs/protocol.md §8.2, §10.6 #49). Java 8 has no
# Unix sockets, so each read after the buffer runs dry asks a tiny Python helper to fetch one input from the
# runner's socket (docs/protocol.md §5.6). Fully qualified names only: an `import` before a `package` line would not compile.
_HELPER_PY = (
    "import socket, sys\\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\\n"
    "s.connect(sys.argv[1])\\n"
    "while True:\\n"
    "    b = s.recv(65536)\\n"
    "    if not b: break\\n"
    "    sys.stdout.buffer.write(b)\\n"
    "sys.stdout.flush()\\n"
)
JAVA_STDIN_CLASS = f"""
final class {_STDIN_CLASS_NAME} extends java.io.InputStream {{
    private static final String HELPER = "{_HELPER_PY}";
    private byte[] buf = new byte[0];
    private int pos = 0;

    static void install() {{
        System.setIn(new {_STDIN_CLASS_NAME}());
    }}

    @Override
    public synchronized int read() throws java.io.IOException {{
        if (!fill()) {{
            return -1;
        }}
        return buf[pos++] & 0xff;
    }}

    @Override
    public synchronized int read(byte[] b, int off, int len) throws java.io.IOException {{
        if (len == 0) {{
            return 0;
        }}
        if (!fill()) {{
            return -1;
        }}
        int n = Math.min(len, buf.length - pos);
        System.arraycopy(buf, pos, b, off, n);
        pos += n;
        return n;
    }}

    @Override
    public synchronized int available() {{
        return buf.length - pos;
    }}

    private boolean fill() throws java.io.IOException {{
        if (pos < buf.length) {{
            return true;
        }}
        System.out.flush();
        String python = System.getenv("{INPUT_PYTHON_VAR}");
        String socket = System.getenv("{INPUT_SOCKET_VAR}");
        if (python == null || socket == null) {{
            return false;
        }}
        Process helper = new ProcessBuilder(python, "-I", "-c", HELPER, socket)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start();
        helper.getOutputStream().close();
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        java.io.InputStream in = helper.getInputStream();
        byte[] chunk = new byte[4096];
        int n;
        while ((n = in.read(chunk)) != -1) {{
            out.write(chunk, 0, n);
        }}
        try {{
            if (helper.waitFor() != 0) {{
                return false;
            }}
        }} catch (InterruptedException e) {{
            Thread.currentThread().interrupt();
            return false;
        }}
        byte[] data = out.toByteArray();
        if (data.length == 0 || data[data.length - 1] != '\\n') {{
            out.write('\\n');  // one input is one line, so readLine() returns instead of asking again
            data = out.toByteArray();
        }}
        buf = data;
        pos = 0;
        return true;
    }}
}}
"""


def java_query(spec: LangSpec, source: str, ctx: LangContext, tmp_dir: Path) -> QueryPlan:
    """Compile into the run's temp dir and run the first public class, with System.in wired to input ops."""
    found = _PUBLIC_CLASS.search(source)
    if found is None:
        class_name, patched = "main", source  # docs/protocol.md §8.2: no public class → main.java
    else:
        class_name = found.group(1)
        patched = source[: found.end()] + _INSTALL_STDIN + source[found.end() :]
    package = _PACKAGE.search(source)
    entry = f"{package.group(1)}.{class_name}" if package else class_name
    src = tmp_dir / f"{class_name}.java"
    out = shlex.quote(str(tmp_dir))
    runtime = shlex.quote(ctx.runtime_path or "java")
    input_env = {INPUT_SOCKET_VAR: str(ctx.input_socket), INPUT_PYTHON_VAR: ctx.helper_python}
    return QueryPlan(
        files=(FileToWrite(path=src, content=patched + "\n" + JAVA_STDIN_CLASS),),
        steps=(
            # -d keeps classes of a `package` in their folder so `java -classpath` finds them.
            ShellStep(command=f"javac -encoding UTF-8 -d {out} {shlex.quote(str(src))}"),
            ShellStep(command=f"{runtime} -classpath {out} {shlex.quote(entry)}", env_extra=input_env),
        ),
        cleanup=(tmp_dir,),
    )


QUERY_HOOKS: Mapping[str, QueryHook] = {"java": java_query}

# --------------------------------------------------------------------------------------------
# Python batch input (docs/protocol.md §5.6)
# --------------------------------------------------------------------------------------------


def batch_site_dir() -> Path:
    """The folder holding the batch-input sitecustomize.py: a data file of this package, never copied.

    Upstream copied the hook into the user's site-packages on every start, overwriting the user's own
    sitecustomize.py (docs/protocol.md §10.3 #28), and the copy outlived the runner and went stale. Ours lives only in
    the installed package, and the planner puts this folder first on PYTHONPATH for batch-flagged children
    only, so nothing is written at runtime and nothing stale can be left behind. The hook chain-loads the
    sitecustomize it shadows, so images and venvs that ship one keep it.
    """
    return BATCH_SITE_DIR


def sitecustomize_source() -> str:
    """The hook's text, for diagnostics and tests."""
    return (BATCH_SITE_DIR / "sitecustomize.py").read_text(encoding="utf-8")
