"""Files that decide what the agent runs must be the agent's own (SPEC §7, §11 "Files").

agent.yaml holds the whitelists and names `commands.scripts_directory`; every script there
runs as the agent. A local user who can change one of them gets code run as the agent (often
root), so they must not be writable by group/other nor owned by anyone but the agent's user
or root. Reading them is fine: they are not secrets (the seed and creds are, see
`credentials.check_secret_files`). Checked once at `cairn-agent run` start, and again for the
script and the directories it sits in each time one is about to run, because scripts come
and go while the agent runs. Windows: no POSIX modes, nothing is checked (filemodes).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import AgentConfig
from cairn_common import filemodes


def check_run_files(config_path: Path, config: AgentConfig) -> None:
    """filemodes.WritableByOthersError, naming the fix, when agent.yaml, its folder (whoever
    can write there can swap the file) or the scripts directory can be changed by others."""
    filemodes.check_not_writable(config_path, "the agent's config, with its whitelists")
    filemodes.check_not_writable(config_path.parent, "the folder of the agent's config")
    if config.commands.scripts_directory:
        filemodes.check_not_writable(config.path(config.commands.scripts_directory),
                                     "commands.scripts_directory")


def script_problem(script: str, directory: str) -> str | None:
    """Why the real script file `script` (inside the real `directory`) must not run, with
    the fix; None when it and every directory from its own up to `directory` are ours."""
    folders = []
    folder = os.path.dirname(script)
    while True:
        folders.append(folder)
        if folder == directory or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    try:  # outermost first: a loose scripts_directory is the fix that matters most
        for folder in reversed(folders):
            what = ("commands.scripts_directory" if folder == directory
                    else "a folder in commands.scripts_directory")
            filemodes.check_not_writable(Path(folder), what)
        filemodes.check_not_writable(Path(script), "the script")
    except filemodes.WritableByOthersError as exc:
        return exc.problem
    return None
