"""The PocketBase superuser login for the bridge (the only sidecar that holds it): from the
0600 file named by CAIRN_BRIDGE_LOGIN_FILE (how `make run` hands it over), else the
environment (by hand), else the file `make run` keeps in the data dir."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cairn_common.filemodes import read_private
from cairn_common.layout import DataLayout


class LoginMissing(ValueError):
    """No superuser login anywhere; the message says where to put one."""


def superuser_login(env: Mapping[str, str], data_dir: Path) -> tuple[str, str]:
    named = env.get("CAIRN_BRIDGE_LOGIN_FILE", "")
    if named:
        try:
            login = json.loads(read_private(Path(named), "the superuser login"))
            return str(login["email"]), str(login["password"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoginMissing(f"CAIRN_BRIDGE_LOGIN_FILE={named}: not a readable "
                               f'{{"email", "password"}} file ({exc.__class__.__name__})'
                               ) from exc
    email = env.get("CAIRN_ADMIN_EMAIL", "")
    password = env.get("CAIRN_ADMIN_PASSWORD", "")
    if email and password:
        return email, password
    saved = DataLayout(data_dir).superuser_file
    try:
        login = json.loads(read_private(saved, "the superuser login"))
        return str(login["email"]), str(login["password"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoginMissing(
            "no PocketBase superuser: set CAIRN_ADMIN_EMAIL and CAIRN_ADMIN_PASSWORD "
            f"(or run `make run` once so {saved} exists): {exc.__class__.__name__}"
        ) from exc
