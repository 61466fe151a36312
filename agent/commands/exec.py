"""exec: run a whitelisted command line or a script from scripts_directory, never a shell.

The request names either a command line that matches an entry of `commands.allowed`
exactly (token by token, so spacing does not matter; no args), or the bare file name of a
script inside `commands.scripts_directory` (args allowed, passed as argv entries). Every
check happens before anything is started; a refused request runs nothing. A script that
another local user could have changed (it or its directory writable by group/other, or not
the agent's user's or root's) is refused, with the fix in the error (agent/trust.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import unicodedata
from typing import Any

from agent import process, trust
from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError

MAX_ARGS = 64
MAX_ARG_CHARS = 4096
MAX_NAME_CHARS = 255
MAX_COMMAND_CHARS = 4096
# Script names are plain file names: a conservative ASCII set leaves no room for shell
# metacharacters, wildcards, whitespace or Unicode look-alikes of separators and dots.
_SCRIPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@-]*")
_POWERSHELL = ("pwsh", "powershell", "powershell.exe")


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {"command": str}, {"args": list, "timeout": (int, float)})
    config = ctx.config.commands
    command = request["command"]
    args = _args(request.get("args"))
    timeout = _timeout(request.get("timeout"), config.timeout)
    _check_text(command)

    whitelisted = _whitelisted(command, config.allowed)
    if whitelisted is not None:
        if args:
            raise CommandError(f"command {_show(command)} is a whitelisted command line and "
                               "takes no args")
        argv, cwd, is_script = _command_argv(whitelisted), None, False
    else:
        script, directory = _script_path(command, ctx)
        argv, cwd, is_script = [*_interpreter(script), *args], directory, True

    result = await process.run(argv, timeout=timeout, max_output=config.max_output_bytes,
                               cwd=cwd)
    output: Any = result.output
    if is_script and not result.truncated:
        output = _json_or_text(result.output)
    ok = result.exit_code == 0 and not result.timed_out
    reply: dict[str, Any] = {
        "status": "success" if ok else "error",
        "command": command,
        "output": output,
        "exit_code": result.exit_code,
        "duration_ms": result.duration_ms,
    }
    if result.truncated:
        reply["truncated"] = True
    if result.timed_out:
        reply["timed_out"] = True
        reply["error"] = f"timed out after {timeout:g} s; its process group was killed"
    elif not ok:
        reply["error"] = f"exited with code {result.exit_code}"
    return reply


def _args(value: list[Any] | None) -> list[str]:
    """Script arguments: argv entries, so they need no quoting; only sizes and NUL matter."""
    if value is None:
        return []
    if len(value) > MAX_ARGS:
        raise CommandError(f"too many args: {len(value)} (at most {MAX_ARGS})")
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            raise CommandError(f"args[{index}] must be a string, got {type(arg).__name__}")
        if "\x00" in arg:
            raise CommandError(f"args[{index}] contains a NUL byte")
        if len(arg) > MAX_ARG_CHARS:
            raise CommandError(f"args[{index}] is too long: {len(arg)} characters "
                               f"(at most {MAX_ARG_CHARS})")
    return list(value)


def _timeout(value: float | None, limit: float) -> float:
    """The request may shorten the configured timeout, never lengthen it."""
    if value is None:
        return limit
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise CommandError("timeout must be a finite number of seconds greater than 0")
    return min(seconds, limit)


def _check_text(command: str) -> None:
    """Refusals common to both forms: a command is one printable line of sane length."""
    if not command.strip():
        raise CommandError("command is empty")
    if len(command) > MAX_COMMAND_CHARS:
        raise CommandError(f"command is too long: {len(command)} characters "
                           f"(at most {MAX_COMMAND_CHARS})")
    if "\x00" in command:
        raise CommandError("command contains a NUL byte")
    if "\n" in command or "\r" in command:
        raise CommandError("command contains a line break")
    for char in command:
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            raise CommandError(f"command contains the control or format character "
                               f"U+{ord(char):04X}")


def _whitelisted(command: str, allowed: tuple[str, ...]) -> list[str] | None:
    """The configured argv whose tokens equal the request's tokens exactly, else None."""
    tokens = _split(command)
    if tokens is None:
        return None
    for entry in allowed:
        if _split(entry) == tokens:
            return tokens
    return None


def _split(line: str) -> list[str] | None:
    try:
        tokens = shlex.split(line)
    except ValueError:  # unbalanced quotes: cannot equal any configured line
        return None
    return tokens or None


def _command_argv(tokens: list[str]) -> list[str]:
    """Resolve the program on the child's minimal PATH so a missing one is a clear error."""
    program = tokens[0]
    if os.path.isabs(program):
        return tokens
    found = shutil.which(program, path=process.default_env().get("PATH", os.defpath))
    if found is None:
        raise CommandError(f"whitelisted command {program!r} was not found on the PATH "
                           f"{process.DEFAULT_PATH}")
    return [found, *tokens[1:]]


def _script_path(name: str, ctx: Context) -> tuple[str, str]:
    """The real path of script `name` inside the real scripts_directory, or CommandError."""
    refused = _script_name_problem(name)
    if refused:
        raise CommandError(f"{_show(name)} is not a whitelisted command, and {refused}")
    configured = ctx.config.commands.scripts_directory
    if not configured:
        raise CommandError(f"{_show(name)} is not a whitelisted command, and scripts are "
                           "disabled (commands.scripts_directory is not set)")
    directory = os.path.realpath(ctx.config.path(configured))
    if not os.path.isdir(directory):
        raise CommandError(f"commands.scripts_directory {directory!r} is not a directory")
    return _resolve_script(name, directory), directory


def script_refusal(name: str, directory: str) -> str | None:
    """Why exec would refuse to run script `name` of the real `directory`, or None: the
    same checks as a request, so the inventory lists only scripts exec accepts."""
    refused = _script_name_problem(name)
    if refused:
        return refused
    try:
        _interpreter(_resolve_script(name, directory))
    except CommandError as exc:
        return str(exc)
    return None


def _resolve_script(name: str, directory: str) -> str:
    """The real path of the safely named script `name` inside the real `directory`: it
    must stay inside, be a regular file and be changeable by no one but us."""
    real = os.path.realpath(os.path.join(directory, name))
    if not _inside(real, directory):
        raise CommandError(f"script {_show(name)} resolves outside scripts_directory; refused")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise CommandError(f"{_show(name)} is not a whitelisted command, and there is no "
                           "script of that name in scripts_directory") from None
    except OSError as exc:
        raise CommandError(f"script {_show(name)} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CommandError(f"script {_show(name)} is not a regular file")
    loose = trust.script_problem(real, directory)  # another user could have rewritten it
    if loose:
        raise CommandError(f"refusing to run script {_show(name)}: {loose}")
    return real


def _inside(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([path, directory]) == directory and path != directory
    except ValueError:  # different drives on Windows
        return False


def _script_name_problem(name: str) -> str | None:
    """Why `name` cannot be a script file name, or None when it is a plain safe name."""
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "absolute paths are refused (a script is a bare file name)"
    if "/" in name or "\\" in name:
        return "path separators are refused (a script is a bare file name)"
    if name in {".", ".."} or ".." in name:
        return "'..' is refused in script names"
    if name.startswith("-"):
        return "a script name must not start with '-'"
    if len(name) > MAX_NAME_CHARS:
        return f"a script name is at most {MAX_NAME_CHARS} characters"
    if not _SCRIPT_NAME.fullmatch(name):
        return ("a script name may contain only ASCII letters, digits and . _ + @ - "
                "(no spaces, shell characters, wildcards or look-alike characters)")
    return None


def _interpreter(script: str) -> list[str]:
    """argv prefix by extension: .sh → /bin/sh, .py → this Python, .ps1 → PowerShell;
    anything else runs directly, and only when it is executable."""
    extension = os.path.splitext(script)[1].lower()
    if extension == ".sh":
        return ["/bin/sh", script]
    if extension == ".py":
        return [sys.executable, script]
    if extension == ".ps1":
        shell = next((found for name in _POWERSHELL if (found := shutil.which(name))), None)
        if shell is None:
            raise CommandError(f"script {os.path.basename(script)!r} needs PowerShell "
                               "(pwsh or powershell), which is not installed")
        return [shell, "-NoProfile", "-NonInteractive", "-File", script]
    # Windows: .bat/.cmd would need cmd.exe, i.e. a shell; they are deliberately not mapped.
    if not os.access(script, os.X_OK):
        raise CommandError(f"script {os.path.basename(script)!r} has no known extension "
                           "(.sh, .py, .ps1) and is not executable")
    return [script]


def _show(text: str, limit: int = 80) -> str:
    """A request value quoted for an error message, shortened: replies stay small."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _json_or_text(output: str) -> Any:
    """A script's stdout that is a JSON object or array is returned as JSON."""
    text = output.strip()
    if not text or text[0] not in "[{":
        return output
    try:
        value = json.loads(text)
    except ValueError:
        return output
    return value if isinstance(value, dict | list) else output
