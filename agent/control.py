"""What the agent asks the control plane over its own NATS connection (subjects and shapes:
cairn_common/device_control.py): a renewed JWT and its desired config. PocketBase (and its
bcrypt password check) is only for enrollment and for recovering from an expired JWT.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import nats.errors

from cairn_common import natsjwt
from cairn_common.device_control import CONFIG, RENEW, control_subject

if TYPE_CHECKING:
    from cairn_common.supervised import SupervisedLink

TIMEOUT = 10.0  # seconds to wait for the bridge's answer


class ControlError(Exception):
    """The control plane did not answer, or refused (the message says which and why)."""


class ControlClient:
    def __init__(self, code: str) -> None:
        self.code = code
        self.link: SupervisedLink | None = None  # set once the link exists (agent/app.py)

    @property
    def usable(self) -> bool:
        return self.link is not None and self.link.connected

    async def renew(self, public_key: str, stale: str) -> str:
        """A JWT for `public_key` newer than `stale`, signed by the bridge."""
        answer = await self._ask(RENEW, {"public_key": public_key, "jwt": stale})
        token = answer.get("jwt")
        if not isinstance(token, str) or not token:
            raise ControlError("the bridge's renewal answer has no jwt")
        try:
            claims = natsjwt.decode(token)  # signed by the key it names as issuer
        except natsjwt.JwtError as exc:
            raise ControlError(f"the renewal answer is not a valid JWT: {exc}") from exc
        if claims.get("sub") != public_key:
            raise ControlError("the renewal answer is a JWT for another key")
        try:
            held = natsjwt.decode(stale, verify=False)
        except natsjwt.JwtError:
            held = {}
        signer = (claims.get("iss"), claims.get("nats", {}).get("issuer_account"))
        if held and signer != (held.get("iss"), held.get("nats", {}).get("issuer_account")):
            raise ControlError("the renewal answer is signed by another key than our JWT")
        return token

    async def desired_config(self) -> Any:
        """This device's desired config (devices.config) as the bridge knows it."""
        return (await self._ask(CONFIG, {})).get("config")

    async def _ask(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        link = self.link
        if link is None or not link.connected:
            raise ControlError("not connected to NATS")
        try:
            with link.hold() as nc:
                msg = await nc.request(control_subject(self.code, kind),
                                       json.dumps(body).encode(), timeout=TIMEOUT)
        except nats.errors.NoRespondersError:
            raise ControlError("no cairn-bridge is answering device requests") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise ControlError(f"no answer from the control plane: "
                               f"{exc.__class__.__name__} {exc}".strip()) from exc
        try:
            answer = json.loads(msg.data)
        except (UnicodeDecodeError, ValueError):
            raise ControlError("the control plane's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ControlError("the control plane's answer is not a JSON object")
        if answer.get("status") != "ok":
            raise ControlError(str(answer.get("error") or "refused without a reason"))
        return answer
